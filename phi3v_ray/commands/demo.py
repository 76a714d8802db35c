"""`phi3v-ray demo`: the whole suite on a tiny model and a generated catalog, on this machine."""

from __future__ import annotations

import argparse
import shlex
import sys
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
  6. ranks every checkpoint, the base model and a trivial predictor on the validation split, scores the chosen
     checkpoint on the held-out test split and prints both tables, with plots and W&B runs on disk

The terminal shows one line per stage; Ray's, Tune's and the libraries' own output goes to <out>/logs/demo.log.
Ctrl-C stops at any stage; re-running with the same arguments reuses finished stages. Exits 0 when the checkpoint
chosen on validation beats the trivial predictor on held-out test category accuracy, title token F1 and price
median APE (the median price error; lower is better).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Output folder and the few sizes worth changing."""
    from phi3v_ray.commands.arguments import positive_int

    parser.add_argument("--out", default="demo-output", help="directory where everything goes")
    parser.add_argument("--rows", type=positive_int, default=3600, help="products in the sample catalog")
    parser.add_argument(
        "--trials", type=positive_int, default=2, help="sweep trials (ASHA stops the weaker ones early)"
    )
    parser.add_argument("--concurrent", type=positive_int, default=2, help="trials running at once")
    parser.add_argument("--steps", type=positive_int, default=1200, help="optimizer steps per trial")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the sample catalog and of every trial (another draw, same claim)",
    )
    add_set_argument(parser, example="tune.num_samples=2")


def run(args: argparse.Namespace) -> int:
    """Run the demo with its terminal lines; exit 0 when the verdict holds, 130 (with how to resume) on Ctrl-C."""
    from phi3v_ray.commands.arguments import check_output_dir
    from phi3v_ray.demo.run import DemoPlan, run_demo
    from phi3v_ray.demo.terminal import demo_terminal

    check_output_dir(args.out, "--out")
    plan = DemoPlan(
        out_dir=Path(args.out),
        rows=args.rows,
        trials=args.trials,
        concurrent_trials=args.concurrent,
        max_steps=args.steps,
        seed=args.seed,
        extra_overrides=list(args.overrides),
    )
    existed = plan.out_dir.exists()
    log_path = plan.out_dir / "logs" / "demo.log"
    try:
        from phi3v_ray.demo.run import demo_config

        demo_config(plan)  # a bad --set fails here, before the output folder or its log exists
        print(
            f"phi3v-ray demo: everything goes to {plan.out_dir}; Ray, Tune and library output to {log_path}"
        )
        with demo_terminal(log_path) as terminal:
            try:
                outcome = run_demo(plan, terminal)
            finally:
                _stop_ray()  # inside the redirect: Ray's parting warnings (raylet, workers) go to the log
    except KeyboardInterrupt:
        print(
            f"interrupted: finished stages are kept in {plan.out_dir}; run `{_same_command()}` again to resume "
            f"(it reuses them)",
            file=sys.stderr,
        )
        return 130
    except BaseException:
        _remove_if_left_empty(plan.out_dir, existed)
        raise
    return 0 if outcome["learned"] else 1


def _stop_ray() -> None:
    """Shut down the demo's local Ray, so nothing of it prints after the terminal is handed back."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _same_command() -> str:
    """The command line this demo was started with, as `phi3v-ray demo ...`."""
    arguments = sys.argv[1:]
    return shlex.join(["phi3v-ray", *arguments]) if arguments[:1] == ["demo"] else "phi3v-ray demo"


def _remove_if_left_empty(out_dir: Path, existed: bool) -> None:
    """A run that fails before writing anything must not leave behind the empty --out directory it created."""
    if not existed and out_dir.is_dir() and not any(out_dir.iterdir()):
        out_dir.rmdir()
