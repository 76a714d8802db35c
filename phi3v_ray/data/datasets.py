"""The datasets an experiment trains and evaluates on: one split of the catalog, from the prepared cache or afresh.

These are the config-level entry points. A split is planned once on the driver (its rows, processor settings and
cache key); when `phi3v-ray data prepare` has already written an entry with that key (phi3v_ray.data.prepared) it
is read back, otherwise the split is streamed through the actor pool (phi3v_ray.data.preprocess).
`TorchTrainer(datasets=build_train_datasets(config))` is how training consumes it.
"""

from __future__ import annotations

import contextlib
import io
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from phi3v_ray.data import prepared
from phi3v_ray.data.catalog import MANIFEST_FILE
from phi3v_ray.data.examples import ProcessorSettings, processor_settings
from phi3v_ray.data.places import Place, below, place
from phi3v_ray.data.preprocess import DEFAULT_ROWS_PER_BLOCK, prepare_dataset
from phi3v_ray.data.rejects import REJECT_SCHEMA, PrepareSummary, RejectsLog
from phi3v_ray.data.split import load_split_rows
from phi3v_ray.errors import DataError
from phi3v_ray.storage import location

if TYPE_CHECKING:
    import ray.data

    from phi3v_ray.config import ExperimentConfig


def prepared_root(config: ExperimentConfig) -> Place:
    """The prepared-split cache folder or prefix: `data.prepared_dir`, else `<catalog_dir>/prepared`."""
    if config.data.prepared_dir:
        return place(config.data.prepared_dir)
    return below(place(config.data.catalog_dir), "prepared")


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
    root: Place
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
        examples = location(entry.examples_dir)
        dataset = ray.data.read_parquet(examples.path, filesystem=examples.filesystem).map_batches(
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
    run_dir = below(plan.root, "streaming", f"{plan.name}-{uuid.uuid4().hex[:8]}")
    return prepare_dataset(
        plan.rows,
        plan.settings,
        prompt_only=plan.prompt_only,
        rejects_dir=below(run_dir, "rejects"),
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
            dataset, small = _stream_split(config, plan)[0], False
        else:
            dataset = read_prepared_dataset(entry)[0]
            size = prepared.uncompressed_parquet_bytes(entry.examples_dir)
            small = 0 < size <= config.data.materialize_mb * 2**20
        if split == "train":
            dataset = mixed_order(dataset, seed=config.run.seed, whole=small)
        datasets[split] = dataset.materialize() if small else dataset
    return datasets


def mixed_order(dataset: ray.data.Dataset, *, seed: int, whole: bool) -> ray.data.Dataset:
    """The train split in a seeded random order instead of the catalog's, where a product's colourways sit together.

    A split small enough to materialise is shuffled row by row (once: the materialised order is every epoch's, and
    the training loop reshuffles within windows per epoch); a larger one streams with its blocks in random order,
    which costs nothing. Seeded, so a restarted run reads the same order."""
    return dataset.random_shuffle(seed=seed) if whole else dataset.randomize_block_order(seed=seed)


def write_prepared_split(
    config: ExperimentConfig, split: str, *, prompt_only: bool, overwrite: bool = False
) -> tuple[prepared.PreparedEntry, PrepareSummary, bool]:
    """Compute one split and store it in the cache; returns (entry, summary, reused) — reused when already there."""
    plan = plan_split(config, split, prompt_only=prompt_only)
    entry = prepared.find_prepared(plan.root, plan.name)
    if entry is not None and not overwrite:
        return entry, summary_of_entry(entry), True
    refuse_catalog_as_cache(plan.root)
    if entry is not None:
        prepared.remove_entry(plan.root, plan.name)
    scratch = prepared.scratch_dir(plan.root, plan.name)
    try:
        summary = _compute_into(config, plan, scratch)
        meta = {
            **plan.key_material,
            "input_rows": summary.input_rows,
            "prepared": summary.prepared,
            "rejected": summary.rejected,
            "by_reason": summary.by_reason,
            "catalog_dir": location(config.data.catalog_dir).uri,
        }
        entry = prepared.commit_entry(scratch, plan.root, plan.name, meta)
    except BaseException:
        _discard(scratch)
        raise
    return entry, summary, False


def refuse_catalog_as_cache(root: Place) -> None:
    """A DataError when the cache folder or prefix is itself a catalog: entries would mix with its images and files.

    `data.prepared_dir` pointed at the catalog (easy with long bucket prefixes) is caught before any work starts.
    """
    where = location(root)
    if where.join(MANIFEST_FILE).is_file():
        raise DataError(
            f"data.prepared_dir {where}: already holds a catalog ({MANIFEST_FILE}); give the prepared cache its own "
            f"folder or prefix, such as {where.join('prepared')}"
        )


def _discard(scratch: Place) -> None:
    """Remove an unfinished scratch folder or attempt prefix; a failure here must not hide the original error."""
    with contextlib.suppress(Exception):  # best effort: an orphan is never read (no meta.json names it)
        location(scratch).delete()


def _compute_into(config: ExperimentConfig, plan: SplitPlan, scratch: Place) -> PrepareSummary:
    """Prepare the split into `scratch` (examples/ + rejects.parquet); a DataError when the counts do not reconcile.

    Ray Data writes the examples straight into the scratch folder or attempt prefix through its filesystem, so a
    bucket-backed cache never passes through the driver's disk.
    """
    dataset, rejects = prepare_dataset(
        plan.rows,
        plan.settings,
        prompt_only=plan.prompt_only,
        rejects_dir=below(scratch, "rejects-parts"),
        cpus_per_actor=config.data.preprocess_cpus,
    )
    examples = location(below(scratch, "examples"))
    dataset.map_batches(prepared.encode_examples, batch_format="numpy", batch_size=None).write_parquet(
        examples.path, filesystem=examples.filesystem, **prepared.EXAMPLE_COMPRESSION
    )
    summary = rejects.summary(prepared.count_parquet_rows(examples))
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(rejects.read(), schema=REJECT_SCHEMA, preserve_index=False), buffer)
    location(below(scratch, "rejects.parquet")).write_bytes(buffer.getvalue())
    location(below(scratch, "rejects-parts")).delete()
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
