"""The package's shape stays readable: layered imports, modules that fit in a sitting, functions that fit on a screen.

- The import graph (tools/import_graph.py, which anyone can run) has no cycle between parts, and model/ and data/
  import nothing above them.
- No module is over 400 lines unless its docstring says why, in a line containing "over 400 lines".
- No function is over 80 lines, except the training recipe (train_loop_per_worker), which is meant to read top to
  bottom as one script.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = REPO_ROOT / "phi3v_ray"
TOOL = REPO_ROOT / "tools" / "import_graph.py"
MAX_MODULE_LINES = 400
LONG_MODULE_MARKER = "over 400 lines"
MAX_FUNCTION_LINES = 80
LONG_FUNCTIONS_ALLOWED = frozenset({"train_loop_per_worker"})


def _import_graph_tool():
    spec = importlib.util.spec_from_file_location("import_graph", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def _write(root: Path, files: dict[str, str]) -> Path:
    """A throwaway phi3v_ray/ tree (with an empty __init__.py and errors.py) holding `files`."""
    for relative, text in {"__init__.py": "", "errors.py": "", **files}.items():
        path = root / "phi3v_ray" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "phi3v_ray"


def test_the_import_graph_command_passes_and_prints_the_layers() -> None:
    done = subprocess.run(
        [sys.executable, str(TOOL)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "  model -> errors\n" in done.stdout
    assert "\nok: no cycle" in done.stdout


# A tree that breaks every rule: model <-> train (a cycle, and an upward arrow from model), data -> tracking under
# TYPE_CHECKING (still upward), train -> commands; plus each way of writing an import the tool must resolve.
BROKEN_TREE = {
    "config.py": "from phi3v_ray import errors\n",
    "model/__init__.py": "",
    "model/loading.py": "def load():\n    from phi3v_ray.train.loop import run\n",
    "data/__init__.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from phi3v_ray import tracking\n",
    "tracking.py": "from phi3v_ray.config import X\n",
    "train/__init__.py": "",
    "train/loop.py": "from ..model import loading\nfrom phi3v_ray.commands import train\n",
    "commands/__init__.py": "",
    "commands/train.py": "import importlib\nimportlib.import_module(f'phi3v_ray.data.{1}')\n",
}
CLEAN_TREE = {
    "model/__init__.py": "from phi3v_ray.errors import E\n",
    "data/__init__.py": "from phi3v_ray.model import M\n",
    "train/__init__.py": "from phi3v_ray.data import D\nfrom phi3v_ray.model import M\n",
    "cli.py": "def main():\n    import importlib\n    importlib.import_module('phi3v_ray.commands.x')\n",
    "commands/__init__.py": "",
    "commands/x.py": "from phi3v_ray.train import T\n",
}


def test_the_import_graph_catches_cycles_upward_arrows_and_command_imports(tmp_path: Path) -> None:
    tool = _import_graph_tool()
    sites = tool.import_sites(_write(tmp_path, BROKEN_TREE))
    kinds = {(s.source, s.target): s.kind for s in sites}
    assert kinds[("model", "train")] == "lazy"
    assert kinds[("data", "tracking")] == "typing"
    assert kinds[("train", "model")] == "module"  # a relative import resolves to its part
    assert kinds[("commands", "data")] == "dynamic"
    assert ("config", "errors") in kinds  # `from phi3v_ray import errors` names a module
    problems = tool.problems(sites)
    assert any(p.startswith("cycle between model, train: ") for p in problems), problems
    assert any(
        p.startswith("upward arrow model -> train (lazy) at phi3v_ray/model/loading.py:2") for p in problems
    )
    assert any(p.startswith("upward arrow data -> tracking (typing)") for p in problems)
    assert any(p.startswith("train imports commands at phi3v_ray/train/loop.py:2") for p in problems)
    assert tool.main(["--package-dir", str(tmp_path / "phi3v_ray")]) == 1


def test_a_clean_layering_passes(tmp_path: Path) -> None:
    tool = _import_graph_tool()
    package = _write(tmp_path, CLEAN_TREE)
    assert tool.problems(tool.import_sites(package)) == []
    assert tool.main(["--package-dir", str(package)]) == 0


def test_no_module_is_over_400_lines_without_saying_why() -> None:
    too_long = []
    for path in _sources():
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if lines > MAX_MODULE_LINES and LONG_MODULE_MARKER not in docstring.lower():
            too_long.append(f"{path.relative_to(REPO_ROOT)}: {lines} lines")
    assert too_long == [], f'split these, or say why in the module docstring ("{LONG_MODULE_MARKER}")'


def test_no_function_is_over_80_lines_but_the_training_recipe() -> None:
    too_long = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES and node.name not in LONG_FUNCTIONS_ALLOWED:
                too_long.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert too_long == []
