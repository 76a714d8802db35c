"""`phi3v-ray evaluate`: score every checkpoint of a sweep on held-out products and rank them."""

from __future__ import annotations

import argparse
import json
from typing import Any

HELP = "score checkpoints on held-out products and rank them (leaderboard, plots, W&B)"
DESCRIPTION = """\
Generates an answer for every product of the evaluation split with every checkpoint (plus the base model and a
trivial predictor), parses it, scores it and ranks the checkpoints.

  phi3v-ray evaluate experiments/demo.yaml
  phi3v-ray evaluate --checkpoints runs/sweep --split test --catalog data/sample
  phi3v-ray evaluate --checkpoints runs/sweep --select-on val --split test --catalog data/sample
  phi3v-ray evaluate --checkpoints s3://bucket/runs/sweep --output s3://bucket/evaluation

With --select-on val the contestants are ranked on the validation split and only the chosen checkpoint (with the
base model and the trivial predictor) is then scored on --split: the reported figures play no part in the choice,
and the leaderboard names the split of every number (`split` column, `test_*` columns for the report).

Writes leaderboard.csv/.json/.md, predictions.parquet, broken.json and PNG plots to the output directory
(default: <first checkpoint path>/evaluation); checkpoints and the output directory may be bucket URIs. A re-run reuses the scores of checkpoints whose files did not
change; a checkpoint that cannot be loaded is listed with its reason and the others are still scored. When no
requested checkpoint can be scored the command fails: exit 2 before any work when their files already show it, else
exit 1 after scoring (a leaderboard of only the base model and the trivial predictor is not a result).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Experiment file or explicit checkpoint paths, plus the few knobs worth changing per run."""
    from phi3v_ray.commands.arguments import add_experiment_arguments, positive_int

    add_experiment_arguments(
        parser,
        experiment_required=False,
        experiment_help="experiments/<name>.yaml (its `evaluate:` section)",
        set_example="evaluate.num_actors=2",
    )
    parser.add_argument("--checkpoints", nargs="+", metavar="DIR", help="sweep or checkpoint dirs or URIs")
    parser.add_argument(
        "--split", choices=("train", "val", "test"), help="split whose figures are reported (default: test)"
    )
    parser.add_argument(
        "--select-on",
        choices=("train", "val", "test"),
        help="rank on this split, then score only the chosen checkpoint on --split (default: the experiment's "
        "evaluate.select_on, else rank on --split itself)",
    )
    parser.add_argument("--catalog", help="catalog directory (default: the experiment's data.catalog_dir)")
    parser.add_argument(
        "--output",
        help="output directory or URI for the leaderboard and predictions (default: <first checkpoint>/evaluation)",
    )
    parser.add_argument(
        "--primary-metric",
        help="metric to rank by, e.g. price_median_ape (default: the experiment's evaluate.primary_metric, category_accuracy)",
    )
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        help="products per generation batch (default: the experiment's evaluate.batch_size)",
    )
    parser.add_argument(
        "--max-examples",
        type=positive_int,
        help="score only the first N products of the split (default: all)",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument(
        "--export-best", metavar="DIR", help="then export the winning checkpoint (merged, bfloat16) into DIR"
    )


# Command-line flag -> the config key it sets (applied after the experiment file and --set).
_FLAG_KEYS = {
    "split": "evaluate.split",
    "select_on": "evaluate.select_on",
    "catalog": "data.catalog_dir",
    "primary_metric": "evaluate.primary_metric",
    "batch_size": "evaluate.batch_size",
    "max_examples": "data.max_eval_examples",
    "output": "evaluate.output_dir",
}


def _build_config(args: argparse.Namespace) -> Any:
    """The experiment config with the command-line choices folded in as overrides."""
    from phi3v_ray.commands.arguments import check_output_dir, load_experiment_from_args
    from phi3v_ray.errors import ConfigError
    from phi3v_ray.evaluation.from_config import (
        check_has_checkpoints,
        check_some_checkpoint_usable,
        checkpoints_model_section,
    )
    from phi3v_ray.evaluation.leaderboard import check_metric_name

    _check_flags(args)
    flags = [f"{key}={getattr(args, flag)}" for flag, key in _FLAG_KEYS.items() if getattr(args, flag)]
    if args.checkpoints:
        flags.append(f"evaluate.checkpoints={json.dumps(args.checkpoints)}")
    if not args.experiment and not args.checkpoints:
        raise ConfigError("evaluate: give an experiment file or --checkpoints DIR...")
    base = None if args.experiment else {"model": checkpoints_model_section(args.checkpoints)}
    config = load_experiment_from_args(args, flags, base=base)
    check_metric_name(
        config.evaluate.primary_metric, f"{args.experiment or 'command line'}: evaluate.primary_metric"
    )
    check_has_checkpoints(config, args.experiment or "command line")
    check_output_dir(config.evaluate.output_dir, "--output" if args.output else "evaluate.output_dir")
    check_some_checkpoint_usable(config)
    return config


def _check_split_rows(config: Any, catalog_flag: str) -> None:
    """The catalog is a split catalog whose evaluation split has rows, checked before Ray starts."""
    from phi3v_ray.commands.arguments import check_input_dir
    from phi3v_ray.data.split import load_split
    from phi3v_ray.errors import DataError

    catalog, split = config.data.catalog_dir, config.evaluate.split
    check_input_dir(catalog, catalog_flag, "a split catalog directory (`phi3v-ray data split DIR`)")
    if not len(load_split(catalog, split)):
        raise DataError(f"{catalog_flag} {catalog}: the {split} split is empty; choose another with --split")
    select_on = config.evaluate.select_on
    if select_on and not len(load_split(catalog, select_on)):
        raise DataError(
            f"{catalog_flag} {catalog}: the {select_on} split (evaluate.select_on) is empty; choose another with "
            f"--select-on"
        )


def _check_flags(args: argparse.Namespace) -> None:
    """The flags' own values, named as the user typed them, before the experiment file is read."""
    from phi3v_ray.commands.arguments import check_input_dir, check_output_dir
    from phi3v_ray.evaluation.leaderboard import check_metric_name

    if args.primary_metric:
        check_metric_name(args.primary_metric, "--primary-metric")
    if args.catalog:
        check_input_dir(args.catalog, "--catalog", "a catalog directory (the output of `data split`)")
    for path in args.checkpoints or ():
        check_input_dir(path, "--checkpoints", "a sweep or checkpoint directory")
    check_output_dir(args.output, "--output")
    check_output_dir(getattr(args, "export_best", None), "--export-best")


def run(args: argparse.Namespace) -> int:
    """Build the evaluation split, run the job, print the leaderboard and where its files are."""
    import sys

    from phi3v_ray.evaluation.from_config import run_evaluation, trained_rows

    config = _build_config(args)
    _check_split_rows(config, "--catalog" if args.catalog else "data.catalog_dir")
    outcome = run_evaluation(config, plots=not args.no_plots)
    print(outcome["markdown"])
    for name, path in outcome["files"].items():
        print(f"{name}: {path}")
    if not trained_rows(outcome["leaderboard"]):
        print(
            "error: no requested checkpoint could be scored (see the BROKEN lines above); the leaderboard holds only "
            "the base model and the trivial predictor",
            file=sys.stderr,
        )
        return 1
    if args.export_best:
        from phi3v_ray.export.run import export_best

        exported = export_best(
            outcome["leaderboard"],
            config.evaluate.checkpoints,
            args.export_best,
            primary_metric=config.evaluate.primary_metric,
        )
        print(f"exported {exported.choice.name} ({exported.choice.reason}) to {exported.out}")
    return 0
