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
        return load_experiment(args.experiment, overrides)
    return config_from_dict(apply_overrides(base or {}, overrides), source=source)
