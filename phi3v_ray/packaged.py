"""Files phi3v-ray itself loads at run time, shipped inside the package as package data.

The repository's top-level `experiments/` folder (where users find and edit the experiment files) is installed as
the package `phi3v_ray.experiments`: pyproject.toml maps it with `package-dir`, so a wheel, an sdist install and an
editable install all carry the very same files, read through `importlib.resources`. A file the package needs and
cannot find is an error that names it; nothing falls back to an empty config.
"""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from phi3v_ray.errors import ConfigError

EXPERIMENTS_PACKAGE = "phi3v_ray.experiments"
DEMO_EXPERIMENT = "demo.yaml"

# Every experiment file that the CLI loads from the installed package (not from the user's working directory).
# The packaging test builds a wheel and checks that it carries each of them.
PACKAGED_EXPERIMENTS: tuple[str, ...] = (DEMO_EXPERIMENT,)


class MissingPackageFile(ConfigError):
    """A file phi3v-ray ships and loads at run time is not in this installation."""


def packaged_name(name: str) -> str:
    """Where the file lives inside the installed package, for messages: phi3v_ray/experiments/<name>."""
    return f"{EXPERIMENTS_PACKAGE.replace('.', '/')}/{name}"


def experiments_root() -> Traversable:
    """The installed `phi3v_ray.experiments` package, or the repository's experiments/ in a source checkout.

    The second case is a checkout whose installation predates experiments/ being package data (an editable install
    made before, or `python -m phi3v_ray.cli` from the repository root with nothing installed): the folder that the
    package maps to lies right beside phi3v_ray/, so the same file is read. Anywhere else a missing package raises.
    """
    try:
        return resources.files(EXPERIMENTS_PACKAGE)
    except ModuleNotFoundError:
        checkout = Path(__file__).resolve().parents[1]
        if (checkout / "pyproject.toml").is_file() and (checkout / "experiments" / "__init__.py").is_file():
            return checkout / "experiments"
        raise


def read_packaged_experiment(name: str) -> str:
    """The text of experiments/<name> as installed with the package; MissingPackageFile when it is not there."""
    where = packaged_name(name)
    try:
        return experiments_root().joinpath(name).read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError) as error:
        raise MissingPackageFile(
            f"{where}: this phi3v-ray installation does not contain {name} (the repository's experiments/{name}, "
            f"shipped as package data); reinstall phi3v-ray from a complete checkout or wheel "
            f"({type(error).__name__}: {error})"
        ) from None


def load_packaged_experiment(name: str) -> dict[str, Any]:
    """experiments/<name> as installed with the package, parsed; an empty or non-mapping file is an error too."""
    import yaml

    where = packaged_name(name)
    try:
        raw = yaml.safe_load(read_packaged_experiment(name))
    except yaml.YAMLError as error:
        raise ConfigError(f"{where}: not valid YAML: {error}") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{where}: expected a mapping of sections (model, finetune, ...), got {raw!r:.80}")
    return raw
