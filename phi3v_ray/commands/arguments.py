"""The experiment arguments every config-driven command shares: a YAML path plus repeatable `--set KEY=VALUE`.

One helper so that `--set` means the same thing (and lands in the same `args.overrides`) in train, tune, evaluate,
data prepare and demo; before it, two commands stored it as `args.overrides` and three as `args.set`.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from phi3v_ray.config import ExperimentConfig


def add_experiment_arguments(
    parser: argparse.ArgumentParser,
    *,
    experiment_required: bool = True,
    experiment_help: str = "experiments/<name>.yaml",
    set_example: str = "optim.lr=1e-4",
) -> None:
    """Add the positional experiment file (optional when `experiment_required` is False) and `--set` (dest overrides)."""
    if experiment_required:
        parser.add_argument("experiment", help=experiment_help)
    else:
        parser.add_argument("experiment", nargs="?", help=experiment_help)
    add_set_argument(parser, example=set_example)


def add_set_argument(parser: argparse.ArgumentParser, *, example: str = "optim.lr=1e-4") -> None:
    """Add only `--set KEY=VALUE` (for commands such as `demo` that build their experiment themselves)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a config value, e.g. --set {example} (repeatable)",
    )


def positive_int(text: str) -> int:
    """argparse type for counts and sizes: a whole number of at least 1 (argparse names the flag in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value}")
    return value


def check_input_file(path: str, what: str, expected: str) -> None:
    """A YAML input refused before anything loads when it is missing, a directory or empty (an empty YAML would
    otherwise read as "no settings" and silently run on defaults)."""
    from pathlib import Path

    from phi3v_ray.errors import ConfigError

    file_path = Path(path)
    if file_path.is_dir():
        raise ConfigError(f"{path}: is a directory; expected {what} file ({expected})")
    if not file_path.exists():
        raise ConfigError(f"{path}: no such {what} file ({expected})")
    if not file_path.read_text(errors="replace").strip():
        raise ConfigError(f"{path}: the {what} file is empty ({expected})")


def check_experiment_file(path: str) -> None:
    """The experiment YAML exists, is a file and is not empty."""
    check_input_file(path, "experiment", "e.g. experiments/demo.yaml, with sections model:, data:, run:")


def check_output_dir(path: str | None, flag: str) -> None:
    """An output location that exists but is not a directory is refused before any work (local paths only)."""
    from pathlib import Path

    from phi3v_ray.errors import ConfigError
    from phi3v_ray.storage import is_uri

    if not path or is_uri(path):
        return
    target = Path(path)
    for candidate in (target, *target.parents):
        if candidate.exists() and not candidate.is_dir():
            shown = "" if candidate == target else f" ({candidate} is a file)"
            raise ConfigError(f"{flag} {path}: is not a directory{shown}; give a directory to write into")
        if candidate.exists():
            return


def check_input_dir(path: str, flag: str, expected: str) -> None:
    """A local input that must be a directory: a missing path or a file is refused before any work."""
    from pathlib import Path

    from phi3v_ray.errors import UserError
    from phi3v_ray.storage import is_uri

    if is_uri(path):
        return
    if not Path(path).exists():
        raise UserError(f"{flag} {path}: no such directory; expected {expected}")
    if not Path(path).is_dir():
        raise UserError(f"{flag} {path}: is a file; expected {expected}")


def load_experiment_from_args(
    args: argparse.Namespace,
    extra_overrides: Iterable[str] = (),
    *,
    base: dict[str, Any] | None = None,
    source: str = "command line",
) -> ExperimentConfig:
    """The validated experiment: the YAML file with `--set` then `extra_overrides` applied.

    Without an experiment file (only possible when it was optional) the config is built from `base` plus the same
    overrides, so a command's own flags (e.g. `--catalog`) can stand in for a file; `source` names that origin in
    error messages.
    """
    from phi3v_ray.config import apply_overrides, config_from_dict, load_experiment

    overrides = [*getattr(args, "overrides", []), *extra_overrides]
    if getattr(args, "experiment", None):
        check_experiment_file(args.experiment)
        return load_experiment(args.experiment, overrides)
    return config_from_dict(apply_overrides(base or {}, overrides), source=source)
