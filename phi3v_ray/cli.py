"""`phi3v-ray` entry point: one argparse tree whose leaves live in `phi3v_ray.commands.*`.

Each command module exposes `HELP` (one line), `DESCRIPTION` (what it does, for newcomers), `add_arguments(parser)`
and `run(args) -> int`. Command modules import heavy libraries (torch, ray) inside `run`, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# (command words, module under phi3v_ray.commands)
COMMANDS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("data", "synth"), "data_synth"),
    (("data", "fetch"), "data_fetch"),
    (("data", "split"), "data_split"),
    (("data", "prepare"), "data_prepare"),
    (("train",), "train"),
    (("tune",), "tune"),
    (("evaluate",), "evaluate"),
    (("predict",), "predict"),
    (("demo",), "demo"),
    (("cluster", "check"), "cluster_check"),
)

GROUP_HELP = {
    "data": "make, download, split and preprocess product catalogs",
    "cluster": "check a Ray cluster launcher file before `ray up`",
}

EPILOG = """\
typical flow:
  phi3v-ray demo                                   # everything, on a tiny model, on this machine
  phi3v-ray data synth --rows 3040 --out data/sample
  phi3v-ray data split data/sample
  phi3v-ray train experiments/demo.yaml --dry-run
  phi3v-ray tune experiments/demo.yaml
  phi3v-ray evaluate experiments/demo.yaml
"""


class _BrokenCommand:
    """Stands in for a command module that failed to import, so the rest of the CLI still works."""

    def __init__(self, name: str, error: Exception) -> None:
        self.HELP = f"(unavailable: {error})"
        self.DESCRIPTION = self.HELP
        self._message = f"command {name!r} is unavailable in this installation: {error}"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("rest", nargs=argparse.REMAINDER)

    def run(self, args: argparse.Namespace) -> int:
        print(f"error: {self._message}", file=sys.stderr)
        return 2


def _load_command(module_name: str):
    try:
        return importlib.import_module(f"phi3v_ray.commands.{module_name}")
    except ImportError as error:
        return _BrokenCommand(module_name, error)


def build_parser() -> argparse.ArgumentParser:
    """Build the full command tree; modules that fail to import still show up with their error on use."""
    parser = argparse.ArgumentParser(
        prog="phi3v-ray",
        description="Fine-tune Phi-3-Vision on product photos with Ray: data, training, sweeps, evaluation.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    top = parser.add_subparsers(dest="command", metavar="COMMAND")
    groups: dict[str, argparse._SubParsersAction] = {}
    for words, module_name in COMMANDS:
        module = _load_command(module_name)
        if len(words) == 2:
            group = words[0]
            if group not in groups:
                group_parser = top.add_parser(group, help=GROUP_HELP[group], description=GROUP_HELP[group])
                groups[group] = group_parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
                groups[group].required = True
            holder = groups[group]
        else:
            holder = top
        sub = holder.add_parser(
            words[-1],
            help=module.HELP,
            description=module.DESCRIPTION,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run one command; user errors print one line and exit 2, never a traceback."""
    from phi3v_ray.errors import RenamedSettingWarning, UserError

    _print_as_one_line(RenamedSettingWarning)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _print_as_one_line(category: type[Warning]) -> None:
    """Show warnings meant for the user as `warning: ...` lines, without the source location Python adds."""
    import warnings

    default = warnings.showwarning

    def show(message, warning_category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' hook
        if issubclass(warning_category, category):
            print(f"warning: {message}", file=sys.stderr)
        else:
            default(message, warning_category, filename, lineno, file, line)

    warnings.showwarning = show


if __name__ == "__main__":
    sys.exit(main())
