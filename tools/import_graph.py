"""Print phi3v_ray's import graph between its parts and check the layering; exit 1 on a cycle or an upward arrow.

    python tools/import_graph.py            # the graph, one line per part, then the verdict
    python tools/import_graph.py --sites    # also every import statement behind each arrow (file:line)

A part is a subpackage (model, data, train, tune, evaluation, demo, commands) or a top-level module (config, errors,
tracking, ...). Every import of phi3v_ray counts, wherever it is written: at module level, inside a function (lazy,
which only postpones the dependency), under `if TYPE_CHECKING:` (typing), or as `importlib.import_module("phi3v_ray.…")`
(dynamic, the CLI's lazy command loading). The rules:

- no cycle between parts (imports inside one part are that part's own business);
- model imports nothing from phi3v_ray but errors; data imports only model, errors and config: the core layers
  never reach up into training, tuning, evaluation, the demo or the commands;
- nothing but the CLI imports commands.

The checks read source files with `ast` (nothing is imported), so this runs in a fraction of a second anywhere.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "phi3v_ray"
# part -> the only parts it may import (the layering rule); parts not listed may import anything but commands.
ALLOWED: dict[str, frozenset[str]] = {
    "model": frozenset({"errors"}),
    "data": frozenset({"model", "errors", "config", "storage"}),
}
COMMANDS_IMPORTERS = frozenset({"commands", "cli"})


@dataclass(frozen=True)
class ImportSite:
    """One import statement that makes `source` depend on `target`."""

    source: str
    target: str
    path: str
    line: int
    kind: str  # module | lazy | typing | dynamic


def part_of(module: str, package_dir: Path) -> str | None:
    """The part a dotted module name belongs to: its subpackage, its top-level module, or None (not ours)."""
    pieces = module.split(".")
    if pieces[0] != PACKAGE:
        return None
    if len(pieces) == 1:
        return PACKAGE
    return (
        pieces[1]
        if (package_dir / pieces[1]).is_dir() or (package_dir / f"{pieces[1]}.py").is_file()
        else None
    )


def module_name(path: Path, package_dir: Path) -> str:
    """phi3v_ray/model/tokenizer.py → phi3v_ray.model.tokenizer (an __init__.py names its package)."""
    relative = path.relative_to(package_dir.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


class _ImportVisitor(ast.NodeVisitor):
    """Collects the phi3v_ray modules a file imports, with where and how (module level, lazy, typing, dynamic)."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.module = module
        self.is_package = is_package
        self.found: list[tuple[str, int, str]] = []
        self._function_depth = 0
        self._typing_depth = 0

    def _kind(self) -> str:
        if self._typing_depth:
            return "typing"
        return "lazy" if self._function_depth else "module"

    def _visit_function(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self._function_depth += 1
        self.generic_visit(node)
        self._function_depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _visit_function

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        is_typing = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        )
        if not is_typing:
            self.generic_visit(node)
            return
        self._typing_depth += 1
        for child in node.body:
            self.visit(child)
        self._typing_depth -= 1
        for child in node.orelse:
            self.visit(child)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((alias.name, node.lineno, self._kind()))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = self._resolve(node.module, node.level)
        for alias in node.names:
            # `from phi3v_ray import cluster` imports a module; `from phi3v_ray.x import name` imports from x.
            self.found.append(
                (f"{base}.{alias.name}" if base == PACKAGE else base, node.lineno, self._kind())
            )

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name == "import_module" and node.args:
            prefix = _literal_prefix(node.args[0])
            if prefix.startswith(f"{PACKAGE}."):
                self.found.append((prefix.rstrip("."), node.lineno, "dynamic"))
        self.generic_visit(node)

    def _resolve(self, module: str | None, level: int) -> str:
        """Absolute name of a (possibly relative) `from ... import` source."""
        if level == 0:
            return module or ""
        anchor = self.module.split(".")
        if not self.is_package:
            anchor = anchor[:-1]
        anchor = anchor[: len(anchor) - (level - 1)]
        return ".".join(anchor + ([module] if module else []))


def _literal_prefix(node: ast.expr) -> str:
    """The constant start of a string or f-string argument ("phi3v_ray.commands." for f"phi3v_ray.commands.{x}")."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return str(node.values[0].value)
    return ""


def import_sites(package_dir: Path) -> list[ImportSite]:
    """Every import between two different parts of the package."""
    sites = []
    for path in sorted(package_dir.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        module = module_name(path, package_dir)
        source = part_of(module, package_dir)
        visitor = _ImportVisitor(module, path.name == "__init__.py")
        visitor.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        for imported, line, kind in visitor.found:
            target = part_of(imported, package_dir)
            if source is None or target is None or target in (source, PACKAGE):
                continue
            relative = path.relative_to(package_dir.parent).as_posix()
            sites.append(ImportSite(source, target, relative, line, kind))
    return sites


def graph_of(sites: list[ImportSite]) -> dict[str, dict[str, set[str]]]:
    """source -> target -> the kinds of import behind that arrow."""
    graph: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for site in sites:
        graph[site.source][site.target].add(site.kind)
    return graph


def cycles(graph: dict[str, dict[str, set[str]]]) -> list[list[str]]:
    """Strongly connected groups of more than one part (Tarjan), each sorted; sorted for stable output."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    nodes = sorted(set(graph) | {t for targets in graph.values() for t in targets})
    for node in nodes:
        if node not in index:
            visit(node)
    return sorted(groups)


def problems(sites: list[ImportSite]) -> list[str]:
    """Every broken rule, one line each, naming the import statements responsible."""
    graph = graph_of(sites)
    found = []
    for group in cycles(graph):
        members = set(group)
        behind = [s for s in sites if s.source in members and s.target in members]
        where = "; ".join(f"{s.source} -> {s.target} at {s.path}:{s.line}" for s in behind)
        found.append(f"cycle between {', '.join(group)}: {where}")
    for site in sites:
        allowed = ALLOWED.get(site.source)
        if allowed is not None and site.target not in allowed:
            found.append(
                f"upward arrow {site.source} -> {site.target} ({site.kind}) at {site.path}:{site.line}; "
                f"{site.source} may import only {', '.join(sorted(allowed))}"
            )
        if site.target == "commands" and site.source not in COMMANDS_IMPORTERS:
            found.append(f"{site.source} imports commands at {site.path}:{site.line}; only the CLI may")
    return found


def render(sites: list[ImportSite], *, with_sites: bool = False) -> list[str]:
    """The graph as text: one line per part with its arrows; kinds other than module-level in brackets."""
    graph = graph_of(sites)
    lines = [
        f"{PACKAGE} import graph by part (lazy: inside a function; typing: TYPE_CHECKING only; "
        "dynamic: importlib)"
    ]
    for source in sorted(graph):
        arrows = []
        for target in sorted(graph[source]):
            kinds = graph[source][target]
            arrows.append(target if "module" in kinds else f"{target} [{'/'.join(sorted(kinds))}]")
        lines.append(f"  {source} -> {', '.join(arrows)}")
        if with_sites:
            for site in sites:
                if site.source == source:
                    lines.append(f"      {site.target}: {site.path}:{site.line} ({site.kind})")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Print the graph and the verdict; exit 1 when a rule is broken."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sites", action="store_true", help="list the import statements behind every arrow")
    parser.add_argument("--package-dir", type=Path, default=REPO_ROOT / PACKAGE, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sites = import_sites(args.package_dir)
    print("\n".join(render(sites, with_sites=args.sites)))
    found = problems(sites)
    if found:
        print(f"\n{len(found)} problem(s):")
        print("\n".join(f"  {line}" for line in found))
        return 1
    print(
        "\nok: no cycle between parts; model and data import nothing above them; only the CLI imports commands"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
