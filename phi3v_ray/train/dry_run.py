"""The training plan `phi3v-ray train --dry-run` prints: resolved config, placement, step count, memory per GPU.

A library module (not the command) so the benchmark and the tests read the same plan the command prints. The
step count uses the training loop's own rule (phi3v_ray.train.schedule.planned_steps) over the rows training will
see: the prepared cache's example count when `data prepare` has written the split, else the split catalog's train
rows, labelled as an upper bound because preprocessing may still reject some of them.
"""

from __future__ import annotations

from dataclasses import dataclass

from phi3v_ray.config import ExperimentConfig
from phi3v_ray.train.schedule import planned_steps, samples_per_step, steps_per_epoch


@dataclass(frozen=True)
class TrainRows:
    """How many examples one epoch holds, and whether that count is exact (prepared) or an upper bound."""

    count: int
    exact: bool
    source: str


def count_train_rows(catalog_dir: str, cap: int | None) -> int | None:
    """Training products in the split catalog, or None when it has not been split yet."""
    from phi3v_ray.data.catalog import read_table
    from phi3v_ray.storage import location

    root = location(catalog_dir)  # a local folder or a bucket prefix
    for name in ("splits.parquet", "catalog.parquet", "manifest.parquet"):
        path = root.join(name)
        if path.is_file():
            frame = read_table(path)
            if "split" in frame.columns:
                rows = int((frame["split"] == "train").sum())
                return min(rows, cap) if cap else rows
    return None


def prepared_train_rows(config: ExperimentConfig) -> int | None:
    """Examples in the prepared cache entry training would read, or None when there is none for this config."""
    from phi3v_ray.data import prepared
    from phi3v_ray.data.datasets import plan_split, prepared_root
    from phi3v_ray.errors import DataError

    if not prepared_root(config).is_dir():
        return None
    try:
        plan = plan_split(config, "train", prompt_only=False)
    except DataError:
        return None
    entry = prepared.find_prepared(plan.root, plan.name)
    return int(entry.meta["prepared"]) if entry is not None else None


def train_rows(config: ExperimentConfig) -> TrainRows | None:
    """The rows one epoch trains on: prepared count if cached, else the catalog's (upper bound), else None."""
    exact = prepared_train_rows(config)
    if exact is not None:
        return TrainRows(exact, exact=True, source="prepared cache, rejects excluded")
    upper = count_train_rows(config.data.catalog_dir, config.data.max_train_examples)
    if upper is not None:
        return TrainRows(upper, exact=False, source="split catalog")
    return None


def placement_text(config: ExperimentConfig, *, cpus: float, gpus: float) -> str:
    """One line: workers x per-worker resources, the total they need, and what this machine has."""
    scaling = config.scaling
    per_worker = {
        "CPU": scaling.cpus_per_worker,
        **({"GPU": scaling.gpus_per_worker} if scaling.use_gpu else {}),
    }
    return (
        f"{scaling.num_workers} Ray Train workers x {per_worker} ({scaling.placement_strategy}); "
        f"needs {scaling.num_workers * scaling.cpus_per_worker:g} CPUs"
        + (f", {scaling.num_workers * scaling.gpus_per_worker:g} GPUs" if scaling.use_gpu else "")
        + f"; this machine has {cpus:g} CPUs, {gpus:g} GPUs"
    )


def steps_text(config: ExperimentConfig, rows: TrainRows | None) -> list[str]:
    """Steps per epoch and in the run, from `rows` by the loop's rule; says when the row count is an upper bound."""
    optim, workers = config.optim, config.scaling.num_workers
    if rows is None:
        return [f"steps per epoch: unknown (no split catalog in {config.data.catalog_dir}; run `data split`)"]
    lines = [
        f"{rows.count} training products / {samples_per_step(config, workers)} samples per optimizer step "
        f"(micro-batch {optim.micro_batch} x accum {optim.grad_accum} x {workers} workers) "
        f"= {steps_per_epoch(config, rows.count, workers)} steps per epoch; "
        f"{planned_steps(config, rows.count, workers)} steps in this run"
    ]
    if rows.exact:
        lines.append(f"(rows from the {rows.source})")
    else:
        lines.append(
            f"(rows from the {rows.source}: an upper bound, preprocessing may reject some; "
            "run `phi3v-ray data prepare` for the exact count)"
        )
    return lines


def memory_text(config: ExperimentConfig) -> str:
    """The per-GPU memory table for this model, sequence length and ZeRO setting."""
    from phi3v_ray.train.memory import ModelDims, memory_table, tokens_per_sample

    if config.model.path:
        from phi3v_ray.model.official_config import load_config

        dims = ModelDims.from_config(load_config(config.model.path))
        label = config.model.path
    else:
        dims = ModelDims.for_preset(config.model.preset or "tiny")
        label = f"preset {config.model.preset}"
    seq_len = tokens_per_sample(dims, config.model.num_crops)
    checkpointing = "on" if config.model.gradient_checkpointing else "off"
    table = memory_table(dims, config, world_size=config.scaling.num_workers, seq_len=seq_len)
    return f"# memory ({label}, gradient checkpointing {checkpointing})\n{table}"


def dry_run_report(config: ExperimentConfig, *, cpus: float, gpus: float) -> str:
    """The text `train --dry-run` prints (also used by benchmarks/train_step.py)."""
    import yaml

    sections = [
        "# resolved config\n" + yaml.safe_dump(config.to_plain(), sort_keys=False).rstrip(),
        "# placement\n" + placement_text(config, cpus=cpus, gpus=gpus),
        "# steps\n" + "\n".join(steps_text(config, train_rows(config))),
        memory_text(config),
    ]
    return "\n\n".join(sections)
