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
  phi3v-ray evaluate --checkpoints s3://bucket/runs/sweep --output s3://bucket/evaluation

Writes leaderboard.csv/.json/.md, predictions.parquet, broken.json and PNG plots to the output directory
(default: <first checkpoint path>/evaluation); checkpoints and the output directory may be bucket URIs. A re-run reuses the scores of checkpoints whose files did not
change; a checkpoint that cannot be loaded is listed with its reason and the others are still scored.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Experiment file or explicit checkpoint paths, plus the few knobs worth changing per run."""
    from phi3v_ray.commands.arguments import add_experiment_arguments

    add_experiment_arguments(
        parser,
        experiment_required=False,
        experiment_help="experiments/<name>.yaml (its `evaluate:` section)",
        set_example="evaluate.num_actors=2",
    )
    parser.add_argument("--checkpoints", nargs="+", metavar="DIR", help="sweep or checkpoint dirs or URIs")
    parser.add_argument("--split", choices=("train", "val", "test"), help="split to score on (default: test)")
    parser.add_argument("--catalog", help="catalog directory (default: the experiment's data.catalog_dir)")
    parser.add_argument("--output", help="output directory or URI for the leaderboard and predictions")
    parser.add_argument(
        "--primary-metric", help="metric to rank by (e.g. category_accuracy, price_median_ape)"
    )
    parser.add_argument("--batch-size", type=int, help="products per generation batch")
    parser.add_argument("--max-examples", type=int, help="score only the first N products of the split")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


# Command-line flag -> the config key it sets (applied after the experiment file and --set).
_FLAG_KEYS = {
    "split": "evaluate.split",
    "catalog": "data.catalog_dir",
    "primary_metric": "evaluate.primary_metric",
    "batch_size": "evaluate.batch_size",
    "max_examples": "data.max_eval_examples",
    "output": "evaluate.output_dir",
}


def _build_config(args: argparse.Namespace) -> Any:
    """The experiment config with the command-line choices folded in as overrides."""
    from phi3v_ray.commands.arguments import load_experiment_from_args
    from phi3v_ray.errors import ConfigError
    from phi3v_ray.evaluation.from_config import check_has_checkpoints, checkpoints_model_section

    flags = [f"{key}={getattr(args, flag)}" for flag, key in _FLAG_KEYS.items() if getattr(args, flag)]
    if args.checkpoints:
        flags.append(f"evaluate.checkpoints={json.dumps(args.checkpoints)}")
    if not args.experiment and not args.checkpoints:
        raise ConfigError("evaluate: give an experiment file or --checkpoints DIR...")
    base = None if args.experiment else {"model": checkpoints_model_section(args.checkpoints)}
    config = load_experiment_from_args(args, flags, base=base)
    check_has_checkpoints(config, args.experiment or "command line")
    return config


def run(args: argparse.Namespace) -> int:
    """Build the evaluation split, run the job, print the leaderboard and where its files are."""
    from phi3v_ray.evaluation.from_config import run_evaluation

    config = _build_config(args)
    outcome = run_evaluation(config, plots=not args.no_plots)
    print(outcome["markdown"])
    for name, path in outcome["files"].items():
        print(f"{name}: {path}")
    return 0
