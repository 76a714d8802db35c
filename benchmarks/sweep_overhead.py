"""How much of a sweep's wall time is spent inside training steps, at 1 vs N concurrent trials.

Runs the same small sweep (tiny preset, CPU, FIFO so every trial runs to the end) once per concurrency level on
one local Ray cluster and prints, side by side with the first level as the baseline:
  wall            the sweep's wall time (Tuner.fit)
  step-s          seconds inside optimizer steps, summed over trials (from each step's samples / samples_per_s,
                  which the loop times without validation and checkpointing)
  trial-s         seconds each trial driver ran, summed (Tune's time_total_s)
  in-steps        step-s / trial-s: the share of a trial's life that is training, the rest is start-up
                  (Ray Train worker group, torch/DeepSpeed import and init, model build), validation, checkpoints
  steps/wall      step-s / wall: training seconds delivered per wall second (above 1 when trials overlap)
  speed-up        baseline wall / this wall

  python benchmarks/sweep_overhead.py --trials 4 --max-steps 8 --concurrency 1 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def step_seconds(history, samples_per_step: int) -> float:  # noqa: ANN001 - pandas DataFrame
    """Seconds inside optimizer steps for one trial: each reported step took samples_per_step / samples_per_s."""
    if history is None or "samples_per_s" not in history:
        return 0.0
    steps = history.dropna(subset=["samples_per_s"]).drop_duplicates(subset=["step"])
    return float((samples_per_step / steps["samples_per_s"]).sum())


def measure(catalog: Path, storage: Path, args: argparse.Namespace, concurrency: int) -> dict[str, float]:
    """Run one sweep at this concurrency; return wall, step and trial seconds."""
    from ray.tune import ExperimentAnalysis

    from phi3v_ray.config import load_experiment
    from phi3v_ray.train.schedule import samples_per_step
    from phi3v_ray.tune.sweep import run_sweep

    lrs = ", ".join(f"{3e-3 / (i + 1):.2e}" for i in range(args.trials))
    config = load_experiment(
        REPO / "experiments" / "demo.yaml",
        [
            f"data.catalog_dir={catalog}",
            f"data.prepared_dir={catalog / 'prepared'}",
            f"data.max_train_examples={args.train_examples}",
            "data.max_eval_examples=4",
            f"run.max_steps={args.max_steps}",
            f"run.eval_every={args.max_steps}",
            f"run.checkpoint_every={args.max_steps}",
            "run.val_generate_samples=0",
            f"run.storage_path={storage}",
            "scaling.cpus_per_worker=0.25",
            f"tune.name=c{concurrency}",
            f"tune.search_space={{optim.lr: {{grid: [{lrs}]}}}}",
            "tune.num_samples=1",
            "tune.scheduler=fifo",
            f"tune.max_concurrent_trials={concurrency}",
        ],
    )
    outcome = run_sweep(config, echo=lambda _line: None)
    analysis = ExperimentAnalysis(str(outcome.sweep_dir))
    samples = samples_per_step(config, config.scaling.num_workers)
    frames = analysis.trial_dataframes.values()
    trial_s = sum(float(frame["time_total_s"].max()) for frame in frames if "time_total_s" in frame)
    steps_s = sum(step_seconds(frame, samples) for frame in frames)
    return {"wall": outcome.wall_s, "step_s": steps_s, "trial_s": trial_s}


def main() -> None:
    """Parse arguments, build a sample catalog, measure each concurrency level, print the comparison."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument("--train-examples", type=int, default=32)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cpus", type=float, default=4, help="logical CPUs of the local Ray cluster")
    args = parser.parse_args()

    from phi3v_ray.data.split import split_catalog
    from phi3v_ray.data.synth import synth_catalog
    from phi3v_ray.ray_session import connect

    work = Path(tempfile.mkdtemp(prefix="sweep-overhead-"))
    catalog = work / "catalog"
    synth_catalog(catalog, 100, seed=1, overwrite=True)
    split_catalog(catalog)
    connect(num_cpus=args.cpus, include_dashboard=True, log_to_driver=False)
    results = {level: measure(catalog, work / "runs", args, level) for level in args.concurrency}

    base = results[args.concurrency[0]]
    print(
        f"\n{args.trials} trials x {args.max_steps} steps, tiny preset, 2 workers x 0.25 CPU, {args.cpus:g} CPUs"
    )
    print(
        f"{'concurrent':>10} {'wall s':>8} {'step-s':>8} {'trial-s':>8} {'in-steps':>9} {'steps/wall':>10} {'speed-up':>9}"
    )
    for level, r in results.items():
        print(
            f"{level:>10} {r['wall']:>8.1f} {r['step_s']:>8.1f} {r['trial_s']:>8.1f} "
            f"{r['step_s'] / r['trial_s']:>9.1%} {r['step_s'] / r['wall']:>10.2f} {base['wall'] / r['wall']:>8.2f}x"
        )


if __name__ == "__main__":
    main()
