"""The datasets an experiment trains and evaluates on: one split of the catalog, from the prepared cache or afresh.

These are the config-level entry points. A split is planned once on the driver (its rows, processor settings and
cache key); when `phi3v-ray data prepare` has already written an entry with that key (phi3v_ray.data.prepared) it
is read back, otherwise the split is streamed through the actor pool (phi3v_ray.data.preprocess).
`TorchTrainer(datasets=build_train_datasets(config))` is how training consumes it.
"""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from phi3v_ray.data import prepared
from phi3v_ray.data.examples import ProcessorSettings, processor_settings
from phi3v_ray.data.preprocess import DEFAULT_ROWS_PER_BLOCK, prepare_dataset
from phi3v_ray.data.rejects import REJECT_SCHEMA, PrepareSummary, RejectsLog
from phi3v_ray.data.split import load_split_rows
from phi3v_ray.errors import DataError

if TYPE_CHECKING:
    import ray.data

    from phi3v_ray.config import ExperimentConfig


def prepared_root(config: ExperimentConfig) -> Path:
    """The prepared-split cache folder: `data.prepared_dir`, else `<catalog_dir>/prepared`."""
    return Path(config.data.prepared_dir or Path(config.data.catalog_dir) / "prepared")


def split_limit(config: ExperimentConfig, split: str) -> int | None:
    """The configured cap on examples for a split (train vs evaluation splits)."""
    return config.data.max_train_examples if split == "train" else config.data.max_eval_examples


@dataclass(frozen=True)
class SplitPlan:
    """A split's rows, settings and cache identity, resolved once on the driver."""

    split: str
    prompt_only: bool
    rows: pd.DataFrame
    settings: ProcessorSettings
    root: Path
    name: str
    key_material: dict[str, Any]


def plan_split(config: ExperimentConfig, split: str, *, prompt_only: bool) -> SplitPlan:
    """Read the split's rows and derive the cache entry name from their fingerprint and the processor settings."""
    rows = load_split_rows(config.data.catalog_dir, split, split_limit(config, split))
    settings = processor_settings(config)
    key_material = {
        "fingerprint": prepared.catalog_fingerprint(rows),
        "split": split,
        "prompt_only": prompt_only,
        "processor_settings": settings.cache_fields(),
        "max_examples": split_limit(config, split),
    }
    name = prepared.entry_name(split, prompt_only, prepared.cache_key(**key_material))
    return SplitPlan(split, prompt_only, rows, settings, prepared_root(config), name, key_material)


def read_prepared_dataset(entry: prepared.PreparedEntry) -> tuple[ray.data.Dataset, RejectsLog]:
    """A cached split as the same lazy dataset of examples the pipeline would produce."""
    import ray

    if prepared.count_parquet_rows(entry.examples_dir) == 0:
        dataset = ray.data.from_items([])  # every row was rejected; Ray cannot read an empty parquet folder
    else:
        dataset = ray.data.read_parquet(str(entry.examples_dir)).map_batches(
            prepared.decode_examples, batch_format="pyarrow", batch_size=DEFAULT_ROWS_PER_BLOCK
        )
    log = RejectsLog(
        directory=entry.directory, input_rows=int(entry.meta["input_rows"]), cached_path=entry.rejects_path
    )
    return dataset, log


def build_prepared_dataset(
    config: ExperimentConfig, split: str, *, prompt_only: bool
) -> tuple[ray.data.Dataset, RejectsLog]:
    """Prepared examples of one split: from the cache when `data prepare` wrote it, else streamed afresh."""
    plan = plan_split(config, split, prompt_only=prompt_only)
    entry = prepared.find_prepared(plan.root, plan.name)
    if entry is not None:
        return read_prepared_dataset(entry)
    return _stream_split(config, plan)


def _stream_split(config: ExperimentConfig, plan: SplitPlan) -> tuple[ray.data.Dataset, RejectsLog]:
    """Preprocess a split on the fly (no cache entry), with its rejects under the cache root's `streaming/`."""
    run_dir = plan.root / "streaming" / f"{plan.name}-{uuid.uuid4().hex[:8]}"
    return prepare_dataset(
        plan.rows,
        plan.settings,
        prompt_only=plan.prompt_only,
        rejects_dir=run_dir / "rejects",
        cpus_per_actor=config.data.preprocess_cpus,
    )


def build_train_datasets(config: ExperimentConfig) -> dict[str, ray.data.Dataset]:
    """`{"train": ..., "val": ...}` with answers in the labels, ready for `TorchTrainer(datasets=...)`.

    A cached split smaller than `data.materialize_mb` is read once into the object store: every trial and epoch then
    splits blocks that are already there instead of starting a parquet read (list files, read, decode tasks), which
    on a busy 2-core machine took most of a demo trial's first epoch. Larger splits stream as usual.
    """
    datasets = {}
    for split in ("train", "val"):
        plan = plan_split(config, split, prompt_only=False)
        entry = prepared.find_prepared(plan.root, plan.name)
        if entry is None:
            datasets[split] = _stream_split(config, plan)[0]
            continue
        dataset = read_prepared_dataset(entry)[0]
        size = prepared.uncompressed_parquet_bytes(entry.examples_dir)
        datasets[split] = dataset.materialize() if 0 < size <= config.data.materialize_mb * 2**20 else dataset
    return datasets


def write_prepared_split(
    config: ExperimentConfig, split: str, *, prompt_only: bool, overwrite: bool = False
) -> tuple[prepared.PreparedEntry, PrepareSummary, bool]:
    """Compute one split and store it in the cache; returns (entry, summary, reused) — reused when already there."""
    plan = plan_split(config, split, prompt_only=prompt_only)
    entry = prepared.find_prepared(plan.root, plan.name)
    if entry is not None and not overwrite:
        return entry, summary_of_entry(entry), True
    if entry is not None:
        shutil.rmtree(entry.directory)
    scratch = prepared.scratch_dir(plan.root, plan.name)
    try:
        summary = _compute_into(config, plan, scratch)
        meta = {
            **plan.key_material,
            "input_rows": summary.input_rows,
            "prepared": summary.prepared,
            "rejected": summary.rejected,
            "by_reason": summary.by_reason,
            "catalog_dir": str(Path(config.data.catalog_dir).resolve()),
        }
        entry = prepared.commit_entry(scratch, plan.root, plan.name, meta)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return entry, summary, False


def _compute_into(config: ExperimentConfig, plan: SplitPlan, scratch: Path) -> PrepareSummary:
    """Prepare the split into `scratch` (examples/ + rejects.parquet); a DataError when the counts do not reconcile."""
    dataset, rejects = prepare_dataset(
        plan.rows,
        plan.settings,
        prompt_only=plan.prompt_only,
        rejects_dir=scratch / "rejects-parts",
        cpus_per_actor=config.data.preprocess_cpus,
    )
    dataset.map_batches(prepared.encode_examples, batch_format="numpy", batch_size=None).write_parquet(
        str(scratch / "examples")
    )
    summary = rejects.summary(prepared.count_parquet_rows(scratch / "examples"))
    pq.write_table(
        pa.Table.from_pandas(rejects.read(), schema=REJECT_SCHEMA, preserve_index=False),
        scratch / "rejects.parquet",
    )
    shutil.rmtree(scratch / "rejects-parts")
    if not summary.reconciles:
        raise DataError(f"prepare {plan.split}: counts do not reconcile: {summary}")
    return summary


def summary_of_entry(entry: prepared.PreparedEntry) -> PrepareSummary:
    """The counts recorded in a cache entry's meta.json."""
    meta = entry.meta
    return PrepareSummary(
        input_rows=int(meta["input_rows"]),
        prepared=int(meta["prepared"]),
        rejected=int(meta["rejected"]),
        by_reason=dict(meta.get("by_reason", {})),
    )
