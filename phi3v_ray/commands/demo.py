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
    parser.add_argument("--out", default="demo-output", help="where everything goes (default: ./demo-output)")
    parser.add_argument("--rows", type=int, default=900, help="products in the sample catalog (default 900)")
    parser.add_argument("--trials", type=int, default=4, help="sweep trials (default 4)")
    parser.add_argument("--concurrent", type=int, default=2, help="trials running at once (default 2)")
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per trial (default 200)")
    add_set_argument(parser, example="tune.num_samples=2")


def run(args: argparse.Namespace) -> int:
    """Run the demo; exit 0 when the best checkpoint beats the trivial predictor on category accuracy."""
    from phi3v_ray.demo.run import DemoPlan, run_demo, verdict

    plan = DemoPlan(
        out_dir=Path(args.out),
        rows=args.rows,
        trials=args.trials,
        concurrent_trials=args.concurrent,
        max_steps=args.steps,
        extra_overrides=list(args.overrides),
    )
    outcome = run_demo(plan)
    message, learned = verdict(outcome["evaluation"]["leaderboard"])
    print(message)
    return 0 if learned else 1
