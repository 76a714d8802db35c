#!/usr/bin/env python3
"""A small mutation-testing runner: do the tests notice when the code is subtly wrong?

    python tools/mutate.py phi3v_ray/data/answers.py --tests tests/test_answers.py [--tests ...]
    python tools/mutate.py --all                     # every target module with its fast test files, plus a table
    python tools/mutate.py --all --only answers.py   # a subset of the built-in map

How it works
- The repository's tracked (and untracked, not ignored) files are copied into a temporary directory; mutants are
  written over the module *in that copy* only, so the real source tree is never touched and the runner is safe
  while other people work in the repo. After each mutant the copy's original text is restored (try/finally, from
  an in-memory backup), and the whole copy is deleted at the end, Ctrl-C included.
- The module is parsed with `ast`; each mutant changes one node (a comparison operator, an arithmetic operator,
  `and`/`or`, a removed `not` or unary minus, an int off by one, a float or bool constant, two neighbouring
  elements of a literal tuple/list of numbers, `a if c else b` swapped, two names in a tuple assignment swapped,
  `min`/`max`, `median`/`mean`, `any`/`all`, `floor`/`ceil`, `uniform`/`loguniform`). Docstrings, annotations,
  f-strings, `raise` statements and lines marked `# pragma: no mutate` are left alone.
- Tests run in one long-lived worker subprocess (`python tools/mutate.py --worker`) that imports the heavy
  third-party libraries once and forks a fresh child per run, which runs pytest on the copy. A first, traced run
  of the unmutated module records which tests execute which lines; a mutant on a line no test executes is
  reported as surviving ("not covered") without running anything, the others run only the tests that execute
  their line, stopping at the first failure (`-x`). A mutant that survives that subset is re-run against the
  whole selection before it is reported as a survivor. A run over its timeout counts as killed.
- Only code executed in the pytest process is traced: code that runs only in subprocesses (Ray workers) reads as
  not covered. The built-in map therefore uses fast, in-process test files.

Standard library only; pytest is run by the worker subprocess with the venv's interpreter (this one).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import gc
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

# target module -> the fast (no Ray cluster) pytest selections that exercise it; the slow modules last
TARGETS: dict[str, list[str]] = {
    "phi3v_ray/data/answers.py": ["tests/test_answers.py", "tests/test_answers_rules.py"],
    "phi3v_ray/data/split.py": ["tests/test_data_split.py", "tests/test_split_rules.py"],
    "phi3v_ray/data/images.py": ["tests/test_images.py", "tests/test_images_rules.py"],
    "phi3v_ray/data/fetch.py": [
        "tests/test_data_fetch.py::test_missing_columns_are_all_named_in_one_error",
        "tests/test_data_fetch.py::test_csv_source_reads_and_missing_file_is_a_clear_error",
        "tests/test_data_fetch.py::test_safe_file_stem_cannot_escape_the_images_dir",
        "tests/test_fetch_rules.py",
    ],
    "phi3v_ray/data/url_guard.py": ["tests/test_fetch_rules.py"],
    "phi3v_ray/data/download.py": ["tests/test_fetch_rules.py"],
    "phi3v_ray/storage.py": ["tests/test_storage.py"],
    "phi3v_ray/data/prepared.py": ["tests/test_pipeline_cache_keys.py", "tests/test_prepared_rules.py"],
    "phi3v_ray/evaluation/metrics.py": ["tests/test_eval_metrics.py", "tests/test_metrics_rules.py"],
    "phi3v_ray/evaluation/leaderboard.py": ["tests/test_eval_metrics.py", "tests/test_leaderboard_rules.py"],
    "phi3v_ray/evaluation/trivial.py": ["tests/test_eval_metrics.py", "tests/test_trivial_rules.py"],
    "phi3v_ray/checkpoint.py": ["tests/test_checkpoint_meta.py"],
    "phi3v_ray/tune/space.py": ["tests/test_tune_space.py", "tests/test_space_rules.py"],
    "phi3v_ray/model/geometry.py": [
        "tests/test_processing.py",
        "tests/test_processing_rules.py",
        "tests/test_images_rules.py",
    ],
    "phi3v_ray/model/processing.py": ["tests/test_processing.py", "tests/test_processing_rules.py"],
    "phi3v_ray/model/image_embedding.py": [
        "tests/test_model_forward.py",
        "tests/test_image_embedding_rules.py",
    ],
}

PROJECT_PACKAGE = "phi3v_ray"
# third-party modules the worker imports once before forking (never the project's own modules)
PRELOAD = (
    "numpy",
    "pandas",
    "pyarrow",
    "pyarrow.parquet",
    "PIL.Image",
    "torch",
    "transformers",
    "yaml",
    "pytest",
)

_COMPARE_SWAPS: dict[type, list[type]] = {
    ast.Lt: [ast.LtE, ast.Gt],
    ast.LtE: [ast.Lt, ast.GtE],
    ast.Gt: [ast.GtE, ast.Lt],
    ast.GtE: [ast.Gt, ast.LtE],
    ast.Eq: [ast.NotEq],
    ast.NotEq: [ast.Eq],
    ast.Is: [ast.IsNot],
    ast.IsNot: [ast.Is],
    ast.In: [ast.NotIn],
    ast.NotIn: [ast.In],
}
_BINOP_SWAPS: dict[type, list[type]] = {
    ast.Add: [ast.Sub],
    ast.Sub: [ast.Add],
    ast.Mult: [ast.Div],
    ast.Div: [ast.Mult, ast.FloorDiv],
    ast.FloorDiv: [ast.Div],
    ast.Mod: [ast.FloorDiv],
    ast.Pow: [ast.Mult],
    ast.BitAnd: [ast.BitOr],
    ast.BitOr: [ast.BitAnd],
}
_CALL_SWAPS = {
    "min": "max",
    "max": "min",
    "median": "mean",
    "mean": "median",
    "nanmedian": "nanmean",
    "nanmean": "nanmedian",
    "any": "all",
    "all": "any",
    "floor": "ceil",
    "ceil": "floor",
    "loguniform": "uniform",
    "uniform": "loguniform",
    "argmin": "argmax",
    "argmax": "argmin",
}
_QUIET_CALLS = {"print", "warn", "debug", "info", "warning", "error", "exception", "echo", "secho"}
_SYMBOL = {
    ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.Is: "is",
    ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in", ast.Add: "+", ast.Sub: "-", ast.Mult: "*",
    ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.Pow: "**", ast.BitAnd: "&", ast.BitOr: "|",
    ast.And: "and", ast.Or: "or",
}  # fmt: skip


@dataclass
class Mutant:
    node_index: int
    line: int
    description: str
    apply: str  # which edit; interpreted by _apply
    arg: object = None
    source: str = ""


@dataclass
class ModuleResult:
    module: str
    total: int = 0
    killed: int = 0
    survivors: list[Mutant] = field(default_factory=list)
    not_covered: list[Mutant] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    reused: int = 0
    sample: int = 1


# ---------------------------------------------------------------------------------------------------------------
# Mutant generation


def _skipped_nodes(tree: ast.Module) -> set[int]:
    """ids of nodes never mutated: docstrings, annotations, f-strings, raise statements, logging/print calls."""
    skip: set[int] = set()

    def mark(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(child) for child in ast.walk(node))

    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if (
            isinstance(first, ast.Expr)
            and isinstance(first.value, ast.Constant)
            and isinstance(first.value.value, str)
        ):
            mark(first)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            mark(node.returns)
            for arg in node.args.args + node.args.kwonlyargs + node.args.posonlyargs:
                mark(arg.annotation)
            if node.args.vararg:
                mark(node.args.vararg.annotation)
            if node.args.kwarg:
                mark(node.args.kwarg.annotation)
        elif isinstance(node, ast.AnnAssign):
            mark(node.annotation)
        elif isinstance(node, (ast.JoinedStr, ast.Raise, ast.Assert, ast.Import, ast.ImportFrom)):
            mark(node)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in _QUIET_CALLS:
                mark(node)
    return skip


def _call_name(node: ast.Call) -> str | None:
    if isinstance(node.func, ast.Name):
        return node.func.id
    if isinstance(node.func, ast.Attribute):
        return node.func.attr
    return None


def _is_number(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        node = node.operand
    return isinstance(node, ast.Constant) and type(node.value) in (int, float)


def generate_mutants(source: str) -> list[Mutant]:
    """Every single-node mutant of the module, with its line and a human description, deduplicated by source."""
    tree = ast.parse(source)
    lines = source.splitlines()
    skip = _skipped_nodes(tree)
    candidates: list[Mutant] = []
    for index, node in enumerate(ast.walk(tree)):
        if id(node) in skip or not hasattr(node, "lineno"):
            continue
        line = node.lineno
        if line - 1 < len(lines) and "pragma: no mutate" in lines[line - 1]:
            continue

        def add(desc: str, kind: str, arg: object = None, index: int = index, line: int = line) -> None:
            candidates.append(Mutant(index, line, desc, kind, arg))

        if isinstance(node, ast.Compare):
            for position, op in enumerate(node.ops):
                for new in _COMPARE_SWAPS.get(type(op), []):
                    add(f"{_SYMBOL[type(op)]} -> {_SYMBOL[new]}", "compare", (position, new))
        elif isinstance(node, (ast.BinOp, ast.AugAssign)):
            for new in _BINOP_SWAPS.get(type(node.op), []):
                add(f"{_SYMBOL[type(node.op)]} -> {_SYMBOL[new]}", "binop", new)
        elif isinstance(node, ast.BoolOp):
            new = ast.Or if isinstance(node.op, ast.And) else ast.And
            add(f"{_SYMBOL[type(node.op)]} -> {_SYMBOL[new]}", "boolop", new)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            add("remove `not`", "not")
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and not _is_number(node.operand):
            add("remove unary minus", "usub")
        elif isinstance(node, ast.IfExp):
            add("swap the branches of `a if c else b`", "ifexp")
        elif isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, bool):
                add(f"{value} -> {not value}", "const", not value)
            elif isinstance(value, int):
                for new in sorted({value + 1, value - 1} - {value} if value != 0 else {1}):
                    add(f"{value} -> {new}", "const", new)
            elif isinstance(value, float):
                new = value * 2 if value not in (0.0,) and value == value else 1.0
                if new == value:  # inf
                    new = 0.0
                add(f"{value!r} -> {new!r}", "const", new)
        elif isinstance(node, (ast.Tuple, ast.List)) and isinstance(node.ctx, ast.Load):
            numbers = [_is_number(e) for e in node.elts]
            if len(node.elts) >= 2 and all(numbers):
                for i in range(len(node.elts) - 1):
                    if ast.dump(node.elts[i]) != ast.dump(node.elts[i + 1]):
                        add(f"swap numbers #{i} and #{i + 1} of a literal sequence", "swap_elts", i)
        elif (
            isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Tuple)
        ):
            elts = node.targets[0].elts
            for i in range(len(elts) - 1):
                if isinstance(elts[i], ast.Name) and isinstance(elts[i + 1], ast.Name):
                    add(f"swap assignment targets {elts[i].id}, {elts[i + 1].id}", "swap_targets", i)
        elif isinstance(node, ast.Call):
            name = _call_name(node)
            if name in _CALL_SWAPS:
                add(f"{name}() -> {_CALL_SWAPS[name]}()", "call", _CALL_SWAPS[name])

    mutants: list[Mutant] = []
    seen = {ast.unparse(tree)}
    for mutant in candidates:
        mutated = copy.deepcopy(tree)
        target = next(node for i, node in enumerate(ast.walk(mutated)) if i == mutant.node_index)
        _apply(target, mutant)
        text = ast.unparse(mutated)
        if text in seen:
            continue
        seen.add(text)
        mutant.source = text
        mutants.append(mutant)
    return mutants


def _apply(node: ast.AST, mutant: Mutant) -> None:
    kind, arg = mutant.apply, mutant.arg
    if kind == "compare":
        position, new = arg  # type: ignore[misc]
        node.ops[position] = new()
    elif kind in ("binop", "boolop"):
        node.op = arg()  # type: ignore[operator]
    elif kind == "not":
        node.operand = ast.UnaryOp(op=ast.Not(), operand=node.operand)  # `not not x`: the truth of x
    elif kind == "usub":
        node.op = ast.UAdd()
    elif kind == "ifexp":
        node.body, node.orelse = node.orelse, node.body
    elif kind == "const":
        node.value = arg
    elif kind == "swap_elts":
        i = arg
        node.elts[i], node.elts[i + 1] = node.elts[i + 1], node.elts[i]
    elif kind == "swap_targets":
        elts = node.targets[0].elts
        i = arg
        elts[i], elts[i + 1] = elts[i + 1], elts[i]
    elif kind == "call":
        if isinstance(node.func, ast.Name):
            node.func.id = arg
        else:
            node.func.attr = arg
    else:
        raise ValueError(kind)


# ---------------------------------------------------------------------------------------------------------------
# The worker: imports heavy libraries once, forks one child per pytest run


def worker_main(copy_dir: str) -> None:
    """Read JSON requests on stdin, answer one JSON line each on stdout; each run happens in a forked child."""
    out = os.fdopen(os.dup(1), "w")  # the answer channel; anything else printed to stdout goes to stderr
    os.dup2(2, 1)
    os.chdir(copy_dir)
    sys.path.insert(0, copy_dir)
    for name, attributes in _third_party_imports(Path(copy_dir) / PROJECT_PACKAGE):
        with contextlib.suppress(Exception):  # a missing optional library only costs speed
            module = importlib.import_module(name)
            for attribute in attributes:  # transformers and friends load submodules on attribute access
                getattr(module, attribute, None)
    with contextlib.suppress(Exception):  # pytest plugins from entry points, loaded by every run otherwise
        from importlib.metadata import entry_points

        for entry in entry_points(group="pytest11"):
            with contextlib.suppress(Exception):
                entry.load()
    gc.collect()
    gc.freeze()  # the preloaded heap is never collected again: pytest's gc.collect() per run stays cheap
    assert not any(m == "phi3v_ray" or m.startswith("phi3v_ray.") for m in sys.modules), (
        "project imported early"
    )
    for line in sys.stdin:
        request = json.loads(line)
        out.write(json.dumps(_run_forked(copy_dir, request)) + "\n")
        out.flush()


def _third_party_imports(package_dir: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) for PRELOAD and every non-project import statement in the package's files."""
    found: dict[str, set[str]] = {name: set() for name in PRELOAD}
    for file in sorted(package_dir.rglob("*.py")):
        try:
            tree = ast.parse(file.read_text())
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found.setdefault(alias.name, set())
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = found.setdefault(node.module, set())
                names.update(alias.name for alias in node.names if alias.name != "*")
    return [
        (name, sorted(names))
        for name, names in found.items()
        if name.split(".")[0] not in (PROJECT_PACKAGE, "__future__")
    ]


def _run_forked(copy_dir: str, request: dict) -> dict:
    result_path = os.path.join(copy_dir, ".mutate-result.json")
    if os.path.exists(result_path):
        os.unlink(result_path)
    log_path = os.path.join(copy_dir, ".mutate-pytest.log")
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # child
        code = 3
        try:
            os.setpgid(0, 0)
            log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(log, 1)
            os.dup2(log, 2)
            code = _child_pytest(copy_dir, request, result_path)
        except BaseException:  # noqa: BLE001
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    try:
        return _wait_child(pid, started, float(request["timeout"]), result_path, log_path)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        raise


def _wait_child(pid: int, started: float, timeout: float, result_path: str, log_path: str) -> dict:
    deadline = started + timeout
    timed_out = False
    status = 0
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            timed_out = True
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            break
        time.sleep(0.02)
    rc = os.waitstatus_to_exitcode(status)
    answer: dict = {"rc": rc, "timed_out": timed_out, "seconds": round(time.monotonic() - started, 2)}
    if os.path.exists(result_path):
        with open(result_path) as handle:
            answer["trace"] = json.load(handle)
    if rc not in (0, 1) and not timed_out:
        with open(log_path, errors="replace") as handle:
            answer["log_tail"] = handle.read()[-3000:]
    return answer


def _child_pytest(copy_dir: str, request: dict, result_path: str) -> int:
    import threading

    import pytest

    traced_file = request.get("trace")
    args = ["-q", "-x", "-p", "no:cacheprovider", "--no-header", "-o", "addopts=", *request["args"]]
    if not traced_file:
        return int(pytest.main(args))

    traced_file = os.path.realpath(os.path.join(copy_dir, traced_file))
    current = {"test": "<import>"}
    lines: dict[int, set[str]] = {}

    def local(frame, event, arg):  # noqa: ANN001, ANN202
        if event == "line":
            lines.setdefault(frame.f_lineno, set()).add(current["test"])
        return local

    real: dict[str, bool] = {}

    def tracer(frame, event, arg):  # noqa: ANN001, ANN202
        name = frame.f_code.co_filename
        if name not in real:
            real[name] = os.path.realpath(name) == traced_file
        if real[name]:
            lines.setdefault(frame.f_lineno, set()).add(current["test"])
            return local
        return None

    durations: dict[str, float] = {}

    class Recorder:
        def pytest_runtest_logreport(self, report):  # noqa: ANN001, ANN202
            durations[report.nodeid] = durations.get(report.nodeid, 0.0) + report.duration

        @pytest.hookimpl(tryfirst=True)
        def pytest_runtest_setup(self, item):  # noqa: ANN001, ANN202
            current["test"] = item.nodeid

        @pytest.hookimpl(trylast=True)
        def pytest_runtest_teardown(self, item):  # noqa: ANN001, ANN202
            current["test"] = item.nodeid

    threading.settrace(tracer)
    sys.settrace(tracer)
    try:
        code = int(pytest.main([a for a in args if a != "-x"], plugins=[Recorder()]))
    finally:
        sys.settrace(None)
        threading.settrace(None)  # type: ignore[arg-type]
    module = sys.modules.get(request.get("module_name", ""))
    loaded_from = os.path.realpath(getattr(module, "__file__", "") or "")
    with open(result_path, "w") as handle:
        json.dump(
            {"lines": {str(k): sorted(v) for k, v in lines.items()}, "loaded_from": loaded_from}, handle
        )
    return code


class Worker:
    """The parent's handle on the worker subprocess."""

    def __init__(self, copy_dir: Path, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", str(copy_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=copy_dir,
            env=env,
        )

    def run(self, args: list[str], timeout: float, trace: str | None = None, module_name: str = "") -> dict:
        request = {"args": args, "timeout": timeout, "trace": trace, "module_name": module_name}
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("mutation worker exited")
        return json.loads(line)

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# ---------------------------------------------------------------------------------------------------------------
# The parent: copy, baseline, mutants, report


def _repo_files(root: Path) -> list[str]:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=root, capture_output=True, check=True
    ).stdout.decode()
    return [name for name in listed.split("\0") if name and (root / name).is_file()]


def make_copy(root: Path, rev: str | None = None) -> Path:
    """A throwaway copy of the repository's source files (no venv, no build outputs): the working tree, or `rev`."""
    target = Path(tempfile.mkdtemp(prefix="phi3v-mutate-"))
    if rev:
        archive = subprocess.run(["git", "archive", rev], cwd=root, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
        return target
    for name in _repo_files(root):
        destination = target / name
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, destination)
    return target


def _worker_env(copy_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy_dir) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(name, "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    official = REPO_ROOT.parent / "shared" / "phi3v-official"
    if "PHI3V_OFFICIAL_DIR" not in env and (official / "config.json").is_file():
        env["PHI3V_OFFICIAL_DIR"] = str(official)  # tests find it relative to the repo, which the copy is not
    return env


def mutate_module(
    worker: Worker,
    copy_dir: Path,
    module: str,
    tests: list[str],
    *,
    use_coverage: bool = True,
    earlier_survivors: set[tuple[int, str]] | None = None,
    sample: int = 1,
    log=print,
) -> ModuleResult:
    result = ModuleResult(module)
    started = time.monotonic()
    path = copy_dir / module
    if copy_dir.resolve() == REPO_ROOT.resolve():
        raise RuntimeError("refusing to mutate the real repository")
    original = path.read_text()
    module_name = module[:-3].replace("/", ".")
    baseline = worker.run(
        tests, timeout=1800, trace=module if use_coverage else None, module_name=module_name
    )
    if baseline["rc"] != 0:
        result.error = (
            f"tests fail on the unmutated code (rc {baseline['rc']}): {baseline.get('log_tail', '')}"
        )
        return result
    coverage: dict[int, list[str]] | None = None
    if use_coverage:
        trace = baseline.get("trace", {})
        if trace.get("loaded_from") != str(path.resolve()):
            result.error = f"tests imported {module_name} from {trace.get('loaded_from')!r}, not the copy"
            return result
        # fastest tests first: with -x a mutant dies at its first failing test, usually a cheap one
        durations = trace.get("durations", {})
        fastest = lambda names: sorted(names, key=lambda name: (durations.get(name, 0.0), name))  # noqa: E731
        coverage = {int(k): fastest(v) for k, v in trace["lines"].items()}
        tests = [name for name in fastest(durations) if durations[name] >= 0] or tests
    timeout = max(20.0, 3 * baseline["seconds"] + 10)
    mutants = generate_mutants(original)[::sample]  # a deterministic sample: every `sample`-th mutant
    result.total = len(mutants)
    result.sample = sample
    log(f"{module}: {len(mutants)} mutants, baseline {baseline['seconds']:.1f}s, selection {' '.join(tests)}")
    try:
        for number, mutant in enumerate(mutants, start=1):
            if earlier_survivors is not None and (mutant.line, mutant.description) not in earlier_survivors:
                result.killed += 1  # an earlier run killed it with a subset of these tests on the same source
                result.reused += 1
                continue
            covering = coverage.get(mutant.line, []) if coverage is not None else ["<import>"]
            if not covering:
                result.not_covered.append(mutant)
                continue
            # module-level code runs at import, so every test may depend on it: run the whole selection
            subset = None if "<import>" in covering else covering
            try:
                _write(path, mutant.source)
                outcome = worker.run(subset or tests, timeout=timeout)
                if outcome["rc"] == 0 and subset is not None:
                    outcome = worker.run(tests, timeout=timeout)  # confirm a survivor on the full selection
            finally:
                _write(path, original)
            if outcome["rc"] == 0:
                result.survivors.append(mutant)
                log(f"  [{number}/{len(mutants)}] SURVIVED line {mutant.line}: {mutant.description}")
            else:
                result.killed += 1
    finally:
        _write(path, original)
    result.seconds = time.monotonic() - started
    return result


_WRITES = iter(range(1, 10**9))


def _write(path: Path, text: str) -> None:
    """Write a module with an mtime no earlier write had, so a cached .pyc of another version is never reused."""
    path.write_text(text)
    stamp = 1_000_000_000 + next(_WRITES)
    os.utime(path, (stamp, stamp))


def report(result: ModuleResult) -> str:
    lines = []
    if result.error:
        return f"{result.module}: ERROR {result.error}"
    survived = len(result.survivors) + len(result.not_covered)
    lines.append(
        f"{result.module}: killed {result.killed} / {result.total}"
        f" ({_percent(result.killed, result.total)}; {survived} survived, {len(result.not_covered)} of them"
        f" on lines no test runs) in {result.seconds:.0f}s"
        + (f"; {result.reused} counted killed from the earlier report" if result.reused else "")
        + (f"; a sample of every {result.sample}th mutant" if result.sample > 1 else "")
    )
    for mutant in sorted(result.survivors + result.not_covered, key=lambda m: m.line):
        tag = " (not covered)" if mutant in result.not_covered else ""
        lines.append(f"  survived line {mutant.line}: {mutant.description}{tag}")
    return "\n".join(lines)


def _read_report(path: Path) -> dict[str, set[tuple[int, str]]]:
    """module -> {(line, description)} of the survivors an earlier printed report lists (error modules left out)."""
    modules: dict[str, set[tuple[int, str]]] = {}
    current: set[tuple[int, str]] | None = None
    for line in path.read_text().splitlines():
        header = re.match(r"(\S+\.py): killed \d+ / \d+", line)
        if header:
            current = modules.setdefault(header.group(1), set())
            continue
        survivor = re.match(r"  survived line (\d+): (.*?)( \(not covered\))?$", line)
        if survivor and current is not None:
            current.add((int(survivor.group(1)), survivor.group(2)))
        elif not line.startswith("  "):
            current = None
    return modules


def _git_show(rev: str, path: str) -> str | None:
    shown = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=REPO_ROOT, capture_output=True, text=True)
    return shown.stdout if shown.returncode == 0 else None


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.0f}%" if whole else "-"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="module files to mutate, relative to the repo root")
    parser.add_argument("--tests", action="append", default=[], help="pytest selection (repeatable)")
    parser.add_argument("--all", action="store_true", help="every module of the built-in map with its tests")
    parser.add_argument(
        "--only", action="append", default=[], help="with --all: modules whose path contains this"
    )
    parser.add_argument(
        "--no-coverage", action="store_true", help="run every mutant against the whole selection"
    )
    parser.add_argument("--list", action="store_true", help="only list the mutants")
    parser.add_argument("--rev", help="mutate this git revision (e.g. HEAD) instead of the working tree")
    parser.add_argument(
        "--known",
        metavar="REPORT",
        help="an earlier report of this tool: where a module's source equals its text at --known-rev, only the"
        " mutants that report lists as survivors are run; the rest count as killed. Valid when tests were only"
        " added since",
    )
    parser.add_argument(
        "--sample", type=int, default=1, help="run only every Nth mutant (a deterministic sample)"
    )
    parser.add_argument("--known-rev", default="HEAD", help="the revision the --known report mutated")
    parser.add_argument("--worker", metavar="COPY_DIR", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.worker:
        worker_main(options.worker)
        return 0

    if options.all:
        plan = {m: t for m, t in TARGETS.items() if not options.only or any(s in m for s in options.only)}
    else:
        if not options.modules or not options.tests:
            parser.error("give module file(s) and --tests, or --all")
        plan = {module: options.tests for module in options.modules}

    if options.list:
        for module in plan:
            text = (
                subprocess.run(
                    ["git", "show", f"{options.rev}:{module}"],
                    cwd=REPO_ROOT,
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout
                if options.rev
                else (REPO_ROOT / module).read_text()
            )
            for mutant in generate_mutants(text):
                print(f"{module}:{mutant.line}: {mutant.description}")
        return 0

    def interrupted(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    if (
        signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    ):  # started in the background: still stop on Ctrl-C/kill
        signal.signal(signal.SIGINT, interrupted)
    known = _read_report(Path(options.known)) if options.known else {}
    copy_dir = make_copy(REPO_ROOT, options.rev)
    worker = None
    results: list[ModuleResult] = []
    try:
        worker = Worker(copy_dir, _worker_env(copy_dir))
        print(f"mutating a copy of {options.rev or 'the working tree'} in {copy_dir}", flush=True)
        for module, tests in plan.items():
            present = [t for t in tests if (copy_dir / t.split("::")[0]).is_file()]
            earlier = None
            if options.known and module in known:
                earlier_text = _git_show(options.known_rev, module)
                if earlier_text is not None and earlier_text == (copy_dir / module).read_text():
                    earlier = known[module]
                else:
                    print(f"{module}: changed since {options.known_rev}; every mutant runs", flush=True)
            result = mutate_module(
                worker,
                copy_dir,
                module,
                present,
                use_coverage=not options.no_coverage,
                earlier_survivors=earlier,
                sample=options.sample,
            )
            results.append(result)
            print(report(result), flush=True)
    except KeyboardInterrupt:
        print("interrupted; the real source tree was never modified", file=sys.stderr)
        return 130
    finally:
        if worker is not None:
            worker.close()
        shutil.rmtree(copy_dir, ignore_errors=True)

    if len(results) > 1 or options.all:
        print()
        print(f"| {'module':<36} | {'killed / total':>14} | {'score':>5} | survivors (not covered) |")
        print(f"|{'-' * 38}|{'-' * 16}|{'-' * 7}|{'-' * 25}|")
        killed = total = 0
        for result in results:
            if result.error:
                print(f"| {result.module:<36} | {'error':>14} | {'-':>5} | {'-':<23} |")
                continue
            killed, total = killed + result.killed, total + result.total
            survived = f"{len(result.survivors) + len(result.not_covered)} ({len(result.not_covered)})"
            print(
                f"| {result.module:<36} | {f'{result.killed} / {result.total}':>14} |"
                f" {_percent(result.killed, result.total):>5} | {survived:<23} |"
            )
        print(f"| {'total':<36} | {f'{killed} / {total}':>14} | {_percent(killed, total):>5} | {'':<23} |")
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
