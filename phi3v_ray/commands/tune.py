"""`phi3v-ray tune`: a Ray Tune sweep where every trial is a full multi-worker DeepSpeed training run."""

from __future__ import annotations

import argparse

from phi3v_ray.commands.arguments import add_experiment_arguments, load_experiment_from_args

HELP = "sweep LoRA rank, learning rate or any config key; one multi-worker training run per trial"
DESCRIPTION = """\
Searches the keys listed under `tune.search_space` in the experiment file, e.g.

  tune:
    search_space:
      finetune.rank:  {choice: [8, 16, 32, 64]}
      optim.lr:   {loguniform: [1.0e-5, 5.0e-4]}
      finetune.alpha: {ratio_of: finetune.rank, value: 2}     # alpha = 2 x the trial's rank
    search_alg: optuna      # random | grid | optuna
    num_samples: 16
    scheduler: asha         # asha (early stopping on val_loss) | fifo

Each trial is one Ray Train run (DeepSpeed, N workers); the prepared data is computed once and shared. Up to
max_concurrent_trials trials run at once (default: as many as the cluster's CPUs/GPUs fit). Every trial is a W&B
run in one group named after the sweep. Results: <run.storage_path>/<tune.name>/sweep_results.csv and a table.
run.storage_path may be a bucket (s3://bucket/runs): checkpoints, results and W&B run files all go there.

A search space naming an unknown key or a value the config rejects fails before any trial starts. Run the same
command again after an interruption (Ctrl-C, lost driver) to finish the missing trials; finished ones are kept.

exit status: 0 every trial finished or was stopped early, 1 some trial failed, 2 bad input (or --dry-run finds the
sweep not runnable on this machine), 130 interrupted (resumable).

examples:
  phi3v-ray tune experiments/demo.yaml --dry-run
  phi3v-ray tune experiments/demo.yaml --set tune.num_samples=8 --set tune.scheduler=fifo
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Experiment file, `--set` overrides, resume policy and the dry-run switch."""
    add_experiment_arguments(
        parser,
        experiment_help="experiments/<name>.yaml (with a `tune:` section)",
        set_example="tune.num_samples=8",
    )
    policy = parser.add_mutually_exclusive_group()
    policy.add_argument("--resume", action="store_true", help="require an interrupted sweep to resume")
    policy.add_argument("--fresh", action="store_true", help="refuse to touch an existing sweep directory")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the search space and print the plan; start nothing (exit 2 when it cannot run here)",
    )


def run(args: argparse.Namespace) -> int:
    """Validate (before Ray starts), then dry-run or sweep; the exit status says how the trials ended."""
    from phi3v_ray.tune.space import parse_search_space

    config = load_experiment_from_args(args)
    space = parse_search_space(config)
    if args.dry_run:
        from phi3v_ray.tune.plan import local_capacity_note, plan_text

        note = local_capacity_note(config)
        print(plan_text(config, space, note))
        return 2 if "not runnable" in note else 0  # a plan that cannot start here is not a success

    from phi3v_ray.commands.train import check_training_data
    from phi3v_ray.tune.results import FAILED, INTERRUPTED

    check_training_data(config)
    from phi3v_ray.tune.sweep import run_sweep

    resume = True if args.resume else (False if args.fresh else None)
    outcome = run_sweep(config, resume=resume)
    statuses = [row.status for row in outcome.rows]
    if INTERRUPTED in statuses:
        print("sweep interrupted: run the same command again to finish the missing trials")
        return 130
    return 1 if FAILED in statuses else 0
