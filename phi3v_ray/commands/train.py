"""`phi3v-ray train`: fine-tune on Ray Train + DeepSpeed, or `--dry-run` to see placement, steps and memory first."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

HELP = "fine-tune Phi-3-Vision with Ray Train + DeepSpeed (LoRA or full)"
DESCRIPTION = """\
Fine-tunes the configured model on the prepared catalog across N Ray Train workers with DeepSpeed ZeRO-2/3.
Checkpoints (adapter safetensors + DeepSpeed engine state + meta.json) go to <run.storage_path>/<run.name>/;
running the same command again resumes from the latest checkpoint. W&B logs from rank 0 (offline unless
WANDB_API_KEY is set).

--dry-run prints the resolved config, worker placement, steps per epoch and a per-GPU memory estimate
(weights, gradients, optimizer state, activations with and without gradient checkpointing) and exits without
starting Ray.

examples:
  phi3v-ray train experiments/demo.yaml --dry-run
  phi3v-ray train experiments/demo.yaml --set optim.lr=5e-4 --set run.max_steps=100
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Experiment file, `--set` overrides and the dry-run switch."""
    parser.add_argument("experiment", help="experiments/<name>.yaml")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set optim.lr=1e-4 (repeatable)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print the plan and memory estimate, start nothing"
    )


def count_train_rows(catalog_dir: str, cap: int | None) -> int | None:
    """Training products in the split catalog, or None when it has not been split yet."""
    import pandas as pd

    root = Path(catalog_dir)
    for name in ("splits.parquet", "catalog.parquet", "manifest.parquet"):
        path = root / name
        if path.is_file():
            frame = pd.read_parquet(path)
            if "split" in frame.columns:
                rows = int((frame["split"] == "train").sum())
                return min(rows, cap) if cap else rows
    return None


def dry_run_report(config, *, cpus: float, gpus: float) -> str:  # noqa: ANN001 - ExperimentConfig, imported lazily
    """The text `--dry-run` prints (also used by benchmarks/train_step.py)."""
    import yaml

    from phi3v_ray.train.memory import ModelDims, memory_table, tokens_per_sample

    scaling, optim = config.scaling, config.optim
    lines = ["# resolved config", yaml.safe_dump(config.to_plain(), sort_keys=False).rstrip(), ""]
    per_worker = {
        "CPU": scaling.cpus_per_worker,
        **({"GPU": scaling.gpus_per_worker} if scaling.use_gpu else {}),
    }
    lines.append("# placement")
    lines.append(
        f"{scaling.num_workers} Ray Train workers x {per_worker} ({scaling.placement_strategy}); "
        f"needs {scaling.num_workers * scaling.cpus_per_worker:g} CPUs"
        + (f", {scaling.num_workers * scaling.gpus_per_worker:g} GPUs" if scaling.use_gpu else "")
        + f"; this machine has {cpus:g} CPUs, {gpus:g} GPUs"
    )
    rows = count_train_rows(config.data.catalog_dir, config.data.max_train_examples)
    samples_per_step = optim.micro_batch * optim.grad_accum * scaling.num_workers
    lines.append("")
    lines.append("# steps")
    if rows is None:
        lines.append(
            f"steps per epoch: unknown (no split catalog in {config.data.catalog_dir}; run `data split`)"
        )
    else:
        steps = max(1, math.floor(rows / samples_per_step))
        total = config.run.max_steps or steps * config.run.epochs
        lines.append(
            f"{rows} training products / {samples_per_step} samples per optimizer step "
            f"(micro-batch {optim.micro_batch} x accum {optim.grad_accum} x {scaling.num_workers} workers) "
            f"= {steps} steps per epoch; {total} steps in this run"
        )
    if config.model.path:
        from phi3v_ray.model.loading import load_config

        dims = ModelDims.from_config(load_config(config.model.path))
        label = config.model.path
    else:
        dims = ModelDims.for_preset(config.model.preset or "tiny")
        label = f"preset {config.model.preset}"
    seq_len = tokens_per_sample(dims, config.model.num_crops)
    lines.append("")
    lines.append(
        f"# memory ({label}, gradient checkpointing {'on' if config.model.gradient_checkpointing else 'off'})"
    )
    lines.append(memory_table(dims, config, world_size=scaling.num_workers, seq_len=seq_len))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Validate, check capacity (before Ray starts), then dry-run or train."""
    from phi3v_ray.config import load_experiment
    from phi3v_ray.errors import ConfigError
    from phi3v_ray.train.launcher import check_capacity, local_capacity

    config = load_experiment(args.experiment, args.overrides)
    if args.dry_run:
        # A dry run plans for the target cluster, so a GPU config is fine on a laptop: report instead of failing.
        cpus, gpus = local_capacity()
        print(dry_run_report(config, cpus=cpus, gpus=gpus))
        try:
            check_capacity(config)
        except ConfigError as error:
            print(f"note: not runnable on this machine as configured: {error}")
        return 0
    check_capacity(config)

    from phi3v_ray.train.launcher import fit

    result = fit(config)  # raises ray.train.TrainingFailedError once retries are used up
    scored = [item for item in result.best_checkpoints if "val_loss" in item[1]]
    best = min(scored, key=lambda item: item[1]["val_loss"]) if scored else None
    print(f"final metrics: { {k: v for k, v in result.metrics.items() if not k.startswith('_')} }")
    if result.checkpoint:
        print(f"latest checkpoint: {result.checkpoint.path}")
    if best:
        print(f"best checkpoint (val_loss {best[1].get('val_loss')}): {best[0].path}")
    return 0
