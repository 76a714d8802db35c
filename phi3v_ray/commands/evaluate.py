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

Writes leaderboard.csv/.json/.md, predictions.parquet, broken.json and PNG plots to the output directory
(default: <first checkpoint path>/evaluation). A re-run reuses the scores of checkpoints whose files did not
change; a checkpoint that cannot be loaded is listed with its reason and the others are still scored.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Experiment file or explicit checkpoint paths, plus the few knobs worth changing per run."""
    parser.add_argument("experiment", nargs="?", help="experiments/<name>.yaml (its `evaluate:` section)")
    parser.add_argument("--checkpoints", nargs="+", metavar="DIR", help="sweep dirs or checkpoint dirs")
    parser.add_argument("--split", choices=("train", "val", "test"), help="split to score on (default: test)")
    parser.add_argument("--catalog", help="catalog directory (default: the experiment's data.catalog_dir)")
    parser.add_argument("--output", help="output directory for the leaderboard and predictions")
    parser.add_argument(
        "--primary-metric", help="metric to rank by (e.g. category_accuracy, price_median_ape)"
    )
    parser.add_argument("--batch-size", type=int, help="products per generation batch")
    parser.add_argument("--max-examples", type=int, help="score only the first N products of the split")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")


def _build_config(args: argparse.Namespace) -> Any:
    """The experiment config with the command-line choices folded in as `--set` overrides."""
    from phi3v_ray.config import ModelSection, load_experiment
    from phi3v_ray.errors import ConfigError
    from phi3v_ray.evaluation.checkpoints import discover_checkpoints

    overrides = list(args.set)
    if args.split:
        overrides.append(f"evaluate.split={args.split}")
    if args.catalog:
        overrides.append(f"data.catalog_dir={args.catalog}")
    if args.primary_metric:
        overrides.append(f"evaluate.primary_metric={args.primary_metric}")
    if args.batch_size:
        overrides.append(f"evaluate.batch_size={args.batch_size}")
    if args.max_examples:
        overrides.append(f"data.max_eval_examples={args.max_examples}")
    if args.output:
        overrides.append(f"evaluate.output_dir={args.output}")
    if args.checkpoints:
        overrides.append(f"evaluate.checkpoints={json.dumps(args.checkpoints)}")
    if args.experiment:
        config = load_experiment(args.experiment, overrides)
    elif args.checkpoints:
        from phi3v_ray.config import apply_overrides, config_from_dict

        # Without an experiment file, preprocess as the checkpoints' base model expects (their meta.json).
        good, _ = discover_checkpoints(args.checkpoints)
        known = ModelSection.model_fields
        base = {key: value for key, value in (good[0].base_model if good else {}).items() if key in known}
        config = config_from_dict(apply_overrides({"model": base}, overrides), source="command line")
    else:
        raise ConfigError("evaluate: give an experiment file or --checkpoints DIR...")
    if not config.evaluate.checkpoints:
        raise ConfigError(
            f"{args.experiment}: evaluate.checkpoints is empty; list sweep or checkpoint directories"
        )
    return config


def run(args: argparse.Namespace) -> int:
    """Build the evaluation split, run the job, print the leaderboard and where its files are."""
    from phi3v_ray.evaluation.runner import run_evaluation

    config = _build_config(args)
    outcome = run_evaluation(config, plots=not args.no_plots)
    print(outcome["markdown"])
    for name, path in outcome["files"].items():
        print(f"{name}: {path}")
    return 0
