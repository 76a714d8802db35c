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
    (("export",), "export"),
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
  phi3v-ray tune experiments/demo.yaml --set tune.max_concurrent_trials=1   # 1 at once fits 2 cores
  phi3v-ray evaluate experiments/demo.yaml --checkpoints runs/demo-sweep
  phi3v-ray predict --checkpoint runs/demo-sweep photo.jpg
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the hand-wrapped descriptions and examples, and appends "(default: X)" to every flag that has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


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
        formatter_class=HelpFormatter,
    )
    from phi3v_ray import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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
            formatter_class=HelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(handler=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse arguments and run one command; user errors print one line and exit 2, never a traceback."""
    from phi3v_ray.errors import RenamedSettingWarning, UserError

    _print_as_one_line(RenamedSettingWarning)
    _quiet_known_noise()
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


def _quiet_known_noise() -> None:
    """Library notices a user cannot act on are shown once per command, or not at all when they are pure noise."""
    import warnings

    # Other warnings still show, but the same text only once per command (not once per call site or batch).
    for category in (UserWarning, FutureWarning):
        warnings.filterwarnings("once", category=category)
    # transformers deprecates a name it calls itself on every model load; nothing in this project uses it.
    warnings.filterwarnings(
        "ignore", message=r".*is_gradient_checkpointing.*deprecated", category=FutureWarning
    )


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
