"""`phi3v-ray train`: fine-tune on Ray Train + DeepSpeed, or `--dry-run` to see placement, steps and memory first."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from phi3v_ray.commands.arguments import add_experiment_arguments, load_experiment_from_args

if TYPE_CHECKING:
    from phi3v_ray.config import ExperimentConfig

HELP = "fine-tune Phi-3-Vision with Ray Train + DeepSpeed (LoRA or full)"
DESCRIPTION = """\
Fine-tunes the configured model on the prepared catalog across N Ray Train workers with DeepSpeed ZeRO-2/3.
Checkpoints (adapter safetensors + DeepSpeed engine state + meta.json) go to <run.storage_path>/<run.name>/;
running the same command again resumes from the latest checkpoint. W&B logs from rank 0 (offline unless
WANDB_API_KEY is set). run.storage_path may be a bucket (s3://bucket/runs); the W&B run files are copied there.

--dry-run prints the resolved config, worker placement, steps per epoch (from the prepared split when `data
prepare` has run, else an upper bound from the split catalog) and a per-GPU memory estimate
(weights, gradients, optimizer state, activations with and without gradient checkpointing) and exits without
starting Ray.

examples:
  phi3v-ray train experiments/demo.yaml --dry-run
  phi3v-ray train experiments/demo.yaml --set optim.lr=5e-4 --set run.max_steps=100
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Experiment file, `--set` overrides and the dry-run switch."""
    add_experiment_arguments(parser)
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan and memory estimate, start nothing"
    )


def run(args: argparse.Namespace) -> int:
    """Validate (config, catalog, val split, capacity) before Ray starts, then dry-run or train."""
    from phi3v_ray.errors import UserError

    config = load_experiment_from_args(args)
    if args.dry_run:
        from phi3v_ray.train.dry_run import dry_run_report
        from phi3v_ray.train.launcher import check_capacity, local_capacity

        # A dry run plans for the target cluster, so a GPU config is fine on a laptop: report instead of failing.
        cpus, gpus = local_capacity()
        print(dry_run_report(config, cpus=cpus, gpus=gpus))
        for check in (check_training_data, check_capacity):
            try:
                check(config)
            except UserError as error:
                print(f"note: not runnable on this machine as configured: {error}")
        return 0
    from phi3v_ray.train.launcher import check_capacity, fit, storage_location
    from phi3v_ray.tune.results import checkpoint_location

    check_capacity(config)
    check_training_data(config)
    result = fit(config)  # raises ray.train.TrainingFailedError once retries are used up
    scored = [item for item in result.best_checkpoints if "val_loss" in item[1]]
    best = min(scored, key=lambda item: item[1]["val_loss"]) if scored else None
    storage = storage_location(config)  # Ray reports paths inside the bucket: print them as URIs
    print(f"final metrics: { {k: v for k, v in result.metrics.items() if not k.startswith('_')} }")
    if result.checkpoint:
        print(f"latest checkpoint: {checkpoint_location(result.checkpoint.path, storage)}")
    if best:
        print(
            f"best checkpoint (val_loss {best[1].get('val_loss')}): {checkpoint_location(best[0].path, storage)}"
        )
    return 0


def check_training_data(config: ExperimentConfig) -> None:
    """The split catalog training reads, checked before Ray starts: it must be a directory holding splits.parquet
    with validation rows. Checkpoints are kept and ranked by val_loss (and sweeps schedule on it), so an empty val
    split is refused instead of training without ever validating."""
    from phi3v_ray.commands.arguments import check_input_dir
    from phi3v_ray.data.catalog import SPLITS_FILE
    from phi3v_ray.data.split import load_split
    from phi3v_ray.errors import DataError
    from phi3v_ray.storage import location

    catalog = config.data.catalog_dir
    check_input_dir(catalog, "data.catalog_dir", "a split catalog directory (`phi3v-ray data split DIR`)")
    if len(load_split(catalog, "val")):
        return
    raise DataError(
        f"{location(catalog).join(SPLITS_FILE)}: the val split is empty, but checkpoints are kept by val_loss; "
        f"split again with a validation share, e.g. `phi3v-ray data split {catalog} --ratios 0.8,0.1,0.1` "
        f"(the experiment's data.ratios: {list(config.data.ratios)})"
    )
