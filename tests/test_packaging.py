"""The wheel works: a built wheel carries every file the CLI loads, and the installed package reads them from itself.

The wheel is built from a copy of the sources (so the checkout gets no build/ or egg-info litter and concurrent runs
do not collide), with the build backend already installed when it satisfies pyproject.toml's build requirements
(offline), else in an isolated build environment. It is installed with pip into a plain folder and imported from
there by a child interpreter whose working directory is outside the checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

try:
    import tomllib
except ImportError:  # Python 3.10: pytest itself depends on tomli there
    import tomli as tomllib

from phi3v_ray.packaged import (
    DEMO_EXPERIMENT,
    EXPERIMENTS_PACKAGE,
    PACKAGED_EXPERIMENTS,
    MissingPackageFile,
    packaged_name,
    read_packaged_experiment,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
PACKAGE_DIR = REPO_ROOT / "phi3v_ray"
# Where pyproject.toml maps phi3v_ray.experiments from (the repository's experiments/ folder).
EXPERIMENTS_DIR = REPO_ROOT / PYPROJECT["tool"]["setuptools"]["package-dir"][EXPERIMENTS_PACKAGE]

PROBE = """
import json, sys
from pathlib import Path
import phi3v_ray
from phi3v_ray.demo.run import DemoPlan, demo_config
from phi3v_ray.packaged import experiments_root
config = demo_config(DemoPlan(out_dir=Path("demo-output")))
print(json.dumps({"module": phi3v_ray.__file__, "experiments": str(experiments_root()),
                  "num_crops": config.model.num_crops, "tune_name": config.tune.name}))
"""


def _build_requirements_installed() -> bool:
    """Whether this environment already has every build requirement pyproject.toml names (then build offline)."""
    for text in PYPROJECT["build-system"]["requires"]:
        requirement = Requirement(text)
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            return False
        if not requirement.specifier.contains(installed, prereleases=True):
            return False
    return True


def _run(command: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """phi3v-ray's wheel, built from a copy of pyproject.toml, README.md and the folders it packages."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    source.mkdir()
    for name in ("pyproject.toml", PYPROJECT["project"]["readme"]):
        shutil.copy2(REPO_ROOT / name, source / name)
    litter = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(PACKAGE_DIR, source / PACKAGE_DIR.name, ignore=litter)
    shutil.copytree(EXPERIMENTS_DIR, source / EXPERIMENTS_DIR.name, ignore=litter)
    isolation = ["--no-build-isolation"] if _build_requirements_installed() else []
    out = work / "dist"
    built = _run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", *isolation, "--wheel-dir", str(out)],
        cwd=work,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (path,) = out.glob("phi3v_ray-*.whl")
    return path


@pytest.fixture(scope="module")
def installed(wheel: Path) -> Path:
    """The wheel installed by pip into a plain folder (no dependencies: this interpreter already has them)."""
    target = wheel.parent.parent / "site"
    install = ["install", "--no-deps", "--no-index", "--target", str(target), str(wheel)]
    done = _run([sys.executable, "-m", "pip", *install], cwd=wheel.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    return target


def _probe_env(site: Path) -> dict[str, str]:
    """Environment for a child interpreter that imports phi3v_ray from `site` first, never from the checkout."""
    return {**os.environ, "PYTHONPATH": str(site), "PYTHONSAFEPATH": "1"}


def test_wheel_carries_every_file_the_cli_loads(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for name in PACKAGED_EXPERIMENTS:
            member = packaged_name(name)
            assert member in names, f"{wheel.name} lacks {member}"
            assert archive.read(member) == (EXPERIMENTS_DIR / name).read_bytes()
        # The repository's experiment files all travel with it (users can copy them out of an installed wheel).
        for path in EXPERIMENTS_DIR.glob("*.yaml"):
            assert packaged_name(path.name) in names
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        assert "phi3v-ray = phi3v_ray.cli:main" in archive.read(entry_points).decode()
        # The tiny tokenizer is package data that load_tokenizer("tiny") reads (the demo and tests need it offline).
        shipped = (PACKAGE_DIR / "model" / "tiny_tokenizer.json").read_bytes()
        assert archive.read("phi3v_ray/model/tiny_tokenizer.json") == shipped
    # pyproject.toml lists the packages explicitly (to map experiments/): every module of the source tree is in.
    sources = {
        str(path.relative_to(REPO_ROOT).as_posix())
        for path in PACKAGE_DIR.rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert sources - names == set(), "pyproject.toml [tool.setuptools] packages misses a package"


def test_installed_wheel_loads_demo_yaml_from_itself(installed: Path, tmp_path: Path) -> None:
    probe = _run([sys.executable, "-c", PROBE], cwd=tmp_path, env=_probe_env(installed))
    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout.strip().splitlines()[-1])
    assert Path(seen["module"]).is_relative_to(installed)
    assert Path(seen["experiments"]).is_relative_to(installed)
    demo = yaml.safe_load((EXPERIMENTS_DIR / DEMO_EXPERIMENT).read_text())
    # demo.yaml's own settings, not the config defaults (num_crops 16) an empty file would give.
    assert seen["num_crops"] == demo["model"]["num_crops"]
    assert seen["tune_name"] == demo["tune"]["name"]


def test_missing_packaged_file_fails_naming_it(installed: Path, tmp_path: Path) -> None:
    broken = tmp_path / "site"
    shutil.copytree(installed, broken)
    (broken / packaged_name(DEMO_EXPERIMENT)).unlink()
    demo = _run(
        [sys.executable, "-m", "phi3v_ray.cli", "demo", "--out", str(tmp_path / "out")],
        cwd=tmp_path,
        env=_probe_env(broken),
    )
    assert demo.returncode == 2, demo.stdout + demo.stderr
    assert f"error: {packaged_name(DEMO_EXPERIMENT)}: " in demo.stderr
    assert "does not contain demo.yaml" in demo.stderr
    assert "Traceback" not in demo.stderr
    assert not (tmp_path / "out").exists()  # it failed before doing anything


def test_missing_packaged_file_error_in_process() -> None:
    with pytest.raises(MissingPackageFile, match=r"phi3v_ray/experiments/no-such\.yaml: .*does not contain"):
        read_packaged_experiment("no-such.yaml")
    assert read_packaged_experiment(DEMO_EXPERIMENT) == (EXPERIMENTS_DIR / DEMO_EXPERIMENT).read_text()
