"""`phi3v-ray demo`: the whole suite on a tiny model and a generated catalog, on this machine."""

from __future__ import annotations

import argparse
from pathlib import Path

from phi3v_ray.commands.arguments import add_set_argument

HELP = "run everything on a tiny model: sample catalog, sweep, evaluation, leaderboard (CPU, ~10 min)"
DESCRIPTION = """\
Runs the complete pipeline on this machine with no GPU and no downloads:

  1. generates a sample product catalog (photos whose look carries category, colour, material and price)
  2. splits it by product title (no product in two splits)
  3. warm-starts the tiny Phi-3-Vision (same architecture, small numbers) on a different synthetic task, standing
     in for a pretrained checkpoint
  4. preprocesses train/val/test once with Ray Data
  5. runs a Ray Tune sweep over LoRA rank and learning rate; every trial is a 2-worker Ray Train run with
     DeepSpeed ZeRO-2 on CPU, logged to W&B offline
  6. scores every checkpoint, the base model and a trivial predictor on held-out products and prints the
     leaderboard, with plots and W&B runs on disk

Re-running with the same --out reuses finished stages.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Output folder and the few sizes worth changing."""
    from phi3v_ray.commands.arguments import positive_int

    parser.add_argument("--out", default="demo-output", help="directory where everything goes")
    parser.add_argument("--rows", type=positive_int, default=900, help="products in the sample catalog")
    parser.add_argument("--trials", type=positive_int, default=4, help="sweep trials")
    parser.add_argument("--concurrent", type=positive_int, default=2, help="trials running at once")
    parser.add_argument("--steps", type=positive_int, default=200, help="optimizer steps per trial")
    add_set_argument(parser, example="tune.num_samples=2")


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit 0 when the best checkpoint beats the trivial predictor on category accuracy."""
    from phi3v_ray.commands.arguments import check_output_dir
    from phi3v_ray.demo.run import DemoPlan, run_demo, verdict

    check_output_dir(args.out, "--out")
    plan = DemoPlan(
        out_dir=Path(args.out),
        rows=args.rows,
        trials=args.trials,
        concurrent_trials=args.concurrent,
        max_steps=args.steps,
        extra_overrides=list(args.overrides),
    )
    existed = plan.out_dir.exists()
    try:
        outcome = run_demo(plan)
    except BaseException:
        _remove_if_left_empty(plan.out_dir, existed)
        raise
    message, learned = verdict(outcome["evaluation"]["leaderboard"])
    print(message)
    return 0 if learned else 1


def _remove_if_left_empty(out_dir: Path, existed: bool) -> None:
    """A run that fails before writing anything must not leave behind the empty --out directory it created."""
    if not existed and out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
