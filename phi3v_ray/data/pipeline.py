"""Ray Data preprocessing: a catalog split → prepared examples streamed into training or evaluation.

Each row is decoded, HD-resized and padded to a uint8 canvas, wrapped in the chat prompt and tokenised by a class
UDF that builds the tokenizer and processor once per actor, on an actor pool sized to the cluster's CPUs. The
dataset is lazy: `TorchTrainer(datasets=build_train_datasets(config))` streams it into the workers' shards while
actors keep decoding, so no split is ever materialised. Rows that cannot become examples (missing or broken
images, pixel bombs, unusable ground truth, failed fetches) go to a rejects parquet with a reason; the summary
checks that prepared + rejected = input. When `phi3v-ray data prepare` has written the same split with the same
settings (phi3v_ray.data.prepared), the build functions read that cache instead of recomputing.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from phi3v_ray.data import prepared
from phi3v_ray.data.images import DEFAULT_MAX_PIXELS, decode_image
from phi3v_ray.data.schema import parse_product_code
from phi3v_ray.errors import DataError

if TYPE_CHECKING:
    import ray.data

    from phi3v_ray.config import ExperimentConfig
    from phi3v_ray.model.processing import Phi3VProcessor

SPLITS = ("train", "val", "test")

# Reason codes for rows rejected before their image is looked at (image reasons live in phi3v_ray.data.images).
REASON_NOT_FETCHED = "not_fetched"
REASON_BAD_PRODUCT_CODE = "bad_product_code"
REASON_BAD_GROUND_TRUTH = "bad_ground_truth"
REASON_ENCODE_ERROR = "encode_error"

REJECT_SCHEMA = pa.schema(
    [
        pa.field("row_id", pa.int64()),
        pa.field("product_code", pa.int64()),
        pa.field("path", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
    ]
)

# Rows per Ray Data block and per UDF call: small enough that a 2-core laptop overlaps decoding with training,
# large enough that per-task overhead stays small next to the HD resize (tens of ms per image). Measured on 2 cores,
# 384 catalog images, 2 actors (steady images/s): 4 rows 66, 8 rows 73-83, 16 rows 86-88, 32 rows 90-98; 16 keeps a
# block of official-size canvases near 80 MB, under Ray Data's 128 MB target block size.
DEFAULT_ROWS_PER_BLOCK = 16


@dataclass(frozen=True)
class ProcessorSettings:
    """Everything an actor needs to rebuild the processor, and everything that changes a prepared row."""

    tokenizer: str | None
    num_crops: int
    crop_size: int
    patch_size: int
    image_token_id: int
    max_pixels: int = DEFAULT_MAX_PIXELS
    tokenizer_fingerprint: str = ""

    def build_processor(self) -> Phi3VProcessor:
        """Load the tokenizer and construct the processor (once per actor)."""
        from phi3v_ray.model.processing import Phi3VProcessor
        from phi3v_ray.model.tokenizer import load_tokenizer

        return Phi3VProcessor(
            load_tokenizer(self.tokenizer),
            num_crops=self.num_crops,
            crop_size=self.crop_size,
            patch_size=self.patch_size,
            image_token_id=self.image_token_id,
        )

    def cache_fields(self) -> dict[str, Any]:
        """Settings that determine the prepared bytes; the tokenizer is named by content, not by path."""
        fields = asdict(self)
        fields.pop("tokenizer")
        return fields


def processor_settings(config: ExperimentConfig) -> ProcessorSettings:
    """Processor settings for an experiment: crop geometry from the model config, crop budget from `model.num_crops`."""
    from phi3v_ray.model.configuration import Phi3VConfig, load_config
    from phi3v_ray.model.tokenizer import load_tokenizer

    model = config.model
    model_config = load_config(model.path) if model.path else Phi3VConfig.preset(model.preset or "tiny")
    tokenizer_source = model.tokenizer
    if tokenizer_source is None and model.path and (Path(model.path) / "tokenizer.json").is_file():
        tokenizer_source = model.path
    tokenizer = load_tokenizer(tokenizer_source)
    return ProcessorSettings(
        tokenizer=tokenizer_source,
        num_crops=model.num_crops,
        crop_size=int(model_config.crop_size),
        patch_size=int(model_config.vision_config.patch_size),
        image_token_id=int(model_config.image_token_id),
        tokenizer_fingerprint=hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode()).hexdigest()[:16],
    )


# ----------------------------------------------------------------------------------------------------------------
# One row → one example or one reject


def prepare_row(
    row: dict[str, Any], processor: Phi3VProcessor, *, prompt_only: bool, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Turn one catalog row into a prepared example, or into a reject record naming why not (never raises)."""
    from phi3v_ray.data.answers import format_answer

    path = row.get("local_image_path")
    path_text = None if _is_missing(path) else str(path)
    product_code, code_problem = parse_product_code(row.get("product_code"))

    def reject(reason: str, detail: str) -> tuple[None, dict[str, Any]]:
        return None, {
            "row_id": int(row["row_id"]),
            "product_code": product_code,
            "path": path_text,
            "reason": reason,
            "detail": detail,
        }

    status = row.get("status")
    if not _is_missing(status) and str(status) != "ok":
        return reject(REASON_NOT_FETCHED, f"manifest status {status!r}")
    if product_code is None:
        return reject(REASON_BAD_PRODUCT_CODE, str(code_problem))
    title, category, full_price = row.get("title"), row.get("category3_code"), row.get("full_price")
    try:
        answer = format_answer(title, category, full_price)
    except (DataError, TypeError, ValueError) as error:
        return reject(REASON_BAD_GROUND_TRUTH, str(error))
    decoded = decode_image(
        path_text, max_pixels=max_pixels, num_crops=processor.num_crops, crop_size=processor.crop_size
    )
    if not decoded.ok:
        return reject(decoded.reason or "decode_error", decoded.detail)
    try:
        encoded = processor.encode_product(decoded.image, answer=None if prompt_only else answer)
    except Exception as error:  # noqa: BLE001 - one odd image must not stop the job; it is reported instead
        return reject(REASON_ENCODE_ERROR, f"{type(error).__name__}: {error}")
    example = {
        "row_id": int(row["row_id"]),
        "product_code": product_code,
        "title": str(title),
        "category": str(category),
        "full_price": float(full_price),
        "answer": answer,
        "input_ids": encoded["input_ids"].astype(np.int32, copy=False),
        "labels": encoded["labels"].astype(np.int32, copy=False),
        "pixel_values": encoded["pixel_values"],
        "image_size": np.asarray(encoded["image_size"], dtype=np.int32),
    }
    return example, None


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def rejects_table(records: Sequence[dict[str, Any]]) -> pa.Table:
    """Reject records → a table with the fixed reject schema (also for zero records)."""
    columns = {name: [record[name] for record in records] for name in REJECT_SCHEMA.names}
    return pa.Table.from_pydict(columns, schema=REJECT_SCHEMA)


# ----------------------------------------------------------------------------------------------------------------
# The Ray Data class UDF


class ExamplePreparer:
    """Ray Data class UDF: holds one processor per actor and turns batches of catalog rows into examples.

    Rejects are written by the actor as small parquet files named after their row ids, so a retried batch
    overwrites its own file instead of double counting, and the training stream carries only good rows.
    """

    def __init__(self, settings: ProcessorSettings, *, prompt_only: bool, rejects_dir: str) -> None:
        self.settings = settings
        self.prompt_only = prompt_only
        self.rejects_dir = Path(rejects_dir)
        self.processor = settings.build_processor()

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, Any]]:
        """Prepare one batch; yields the examples (nothing when every row was rejected)."""
        rows = _batch_rows(batch)
        examples, rejects = [], []
        for row in rows:
            example, reject = prepare_row(
                row, self.processor, prompt_only=self.prompt_only, max_pixels=self.settings.max_pixels
            )
            if example is not None:
                examples.append(example)
            else:
                rejects.append(reject)
        if rejects:
            self._write_rejects(rejects)
        if examples:
            yield {name: [example[name] for example in examples] for name in examples[0]}

    def _write_rejects(self, records: list[dict[str, Any]]) -> None:
        row_ids = sorted(record["row_id"] for record in records)
        digest = hashlib.sha256(str(row_ids).encode()).hexdigest()[:12]
        final = self.rejects_dir / f"rejects-{row_ids[0]:09d}-{digest}.parquet"
        partial = final.with_suffix(f".{uuid.uuid4().hex[:6]}.tmp")
        pq.write_table(rejects_table(records), partial)
        os.replace(partial, final)


def _batch_rows(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    names = list(batch)
    count = len(batch[names[0]]) if names else 0
    return [{name: _plain(batch[name][i]) for name in names} for i in range(count)]


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


# ----------------------------------------------------------------------------------------------------------------
# Rejects and the summary


@dataclass(frozen=True)
class PrepareSummary:
    """Counts of one preparation: every input row is either prepared or rejected."""

    input_rows: int
    prepared: int
    rejected: int
    by_reason: dict[str, int] = field(default_factory=dict)

    @property
    def reconciles(self) -> bool:
        """True when prepared + rejected = input."""
        return self.prepared + self.rejected == self.input_rows

    def __str__(self) -> str:
        reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(self.by_reason.items()))
        verdict = "ok" if self.reconciles else "MISMATCH"
        line = f"input {self.input_rows} = prepared {self.prepared} + rejected {self.rejected} ({verdict})"
        return f"{line}; rejected: {reasons}" if reasons else line


@dataclass(frozen=True)
class RejectsLog:
    """Where a preparation's rejects are written; readable once the dataset has been consumed."""

    directory: Path
    input_rows: int
    cached_path: Path | None = None

    def read(self) -> pd.DataFrame:
        """All reject records so far, one per rejected row (retried batches deduplicated), sorted by row id."""
        if self.cached_path is not None:
            table = pq.read_table(self.cached_path)
        else:
            files = sorted(self.directory.glob("rejects-*.parquet"))
            table = pa.concat_tables([pq.read_table(f) for f in files]) if files else rejects_table([])
        frame = table.to_pandas()
        return frame.drop_duplicates("row_id").sort_values("row_id").reset_index(drop=True)

    def summary(self, prepared_count: int) -> PrepareSummary:
        """Reconcile: `prepared_count` examples came out of the dataset; the rest must be here with reasons."""
        frame = self.read()
        return PrepareSummary(
            input_rows=self.input_rows,
            prepared=prepared_count,
            rejected=len(frame),
            by_reason={str(k): int(v) for k, v in Counter(frame["reason"]).items()},
        )


# ----------------------------------------------------------------------------------------------------------------
# Building datasets


def load_split_rows(
    catalog_dir: str | os.PathLike[str], split: str, max_examples: int | None = None
) -> pd.DataFrame:
    """The split's catalog rows with absolute image paths and a `row_id` (position in the split)."""
    from phi3v_ray.data.split import load_split

    if split not in SPLITS:
        raise DataError(f"split {split!r}: expected one of {', '.join(SPLITS)}")
    rows = load_split(catalog_dir, split)
    return with_row_ids(resolve_image_paths(rows, catalog_dir), max_examples)


def resolve_image_paths(rows: pd.DataFrame, catalog_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """Make relative `local_image_path`s absolute against the catalog directory, so actors anywhere can open them."""
    if "local_image_path" not in rows.columns:
        raise DataError(
            f"{catalog_dir}: split rows have no local_image_path column; run `phi3v-ray data fetch` first"
        )
    base = Path(catalog_dir).resolve()

    def resolve(value: Any) -> Any:
        if _is_missing(value) or str(value).strip() == "":
            return None
        path = Path(str(value))
        return str(path if path.is_absolute() else base / path)

    out = rows.copy()
    out["local_image_path"] = [resolve(v) for v in out["local_image_path"]]
    return out


def with_row_ids(rows: pd.DataFrame, max_examples: int | None = None) -> pd.DataFrame:
    """Keep the first `max_examples` rows (stable) and number them 0..n-1 for reject bookkeeping."""
    out = rows.iloc[:max_examples] if max_examples is not None else rows
    out = out.reset_index(drop=True).copy()
    out["row_id"] = np.arange(len(out), dtype=np.int64)
    return out


_INPUT_COLUMNS = (
    "row_id",
    "product_code",
    "title",
    "category3_code",
    "full_price",
    "local_image_path",
    "status",
)


def prepare_dataset(
    rows: pd.DataFrame,
    settings: ProcessorSettings,
    *,
    prompt_only: bool,
    rejects_dir: str | os.PathLike[str],
    num_actors: int | None = None,
    cpus_per_actor: float = 1.0,
    rows_per_block: int = DEFAULT_ROWS_PER_BLOCK,
) -> tuple[ray.data.Dataset, RejectsLog]:
    """Lazy dataset of prepared examples for `rows` (which carry `row_id`), plus where its rejects go.

    `num_actors` fixes the pool size (benchmarks, tests); by default the pool autoscales with the cluster.
    """
    import ray

    rejects_path = Path(rejects_dir)
    if rejects_path.exists():
        shutil.rmtree(rejects_path)
    rejects_path.mkdir(parents=True)
    columns = [name for name in _INPUT_COLUMNS if name in rows.columns]
    inputs = rows[columns].copy()
    for name in ("title", "category3_code", "local_image_path", "status"):
        if name in inputs.columns:
            inputs[name] = inputs[name].astype(object).where(inputs[name].notna(), None)
    # Many small blocks: each becomes one actor task, which is what spreads the work over the pool.
    chunks = [inputs.iloc[start : start + rows_per_block] for start in range(0, len(inputs), rows_per_block)]
    if num_actors is None:
        # Autoscale from one actor up to the cluster's CPUs, leaving room for Train workers that reserve theirs.
        cluster_cpus = float(ray.cluster_resources().get("CPU", 1.0))
        pool = ray.data.ActorPoolStrategy(min_size=1, max_size=max(1, int(cluster_cpus // cpus_per_actor)))
    else:
        pool = ray.data.ActorPoolStrategy(size=max(1, num_actors))
    dataset = ray.data.from_pandas(chunks or [inputs]).map_batches(
        ExamplePreparer,
        fn_constructor_kwargs={
            "settings": settings,
            "prompt_only": prompt_only,
            "rejects_dir": str(rejects_path),
        },
        batch_size=None,
        batch_format="numpy",
        compute=pool,
        num_cpus=cpus_per_actor,
    )
    return dataset, RejectsLog(directory=rejects_path, input_rows=len(rows))


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
        dataset, rejects = prepare_dataset(
            plan.rows,
            plan.settings,
            prompt_only=prompt_only,
            rejects_dir=scratch / "rejects-parts",
            cpus_per_actor=config.data.preprocess_cpus,
        )
        dataset.map_batches(prepared.encode_examples, batch_format="numpy", batch_size=None).write_parquet(
            str(scratch / "examples")
        )
        prepared_count = prepared.count_parquet_rows(scratch / "examples")
        summary = rejects.summary(prepared_count)
        pq.write_table(
            pa.Table.from_pandas(rejects.read(), schema=REJECT_SCHEMA, preserve_index=False),
            scratch / "rejects.parquet",
        )
        shutil.rmtree(scratch / "rejects-parts")
        if not summary.reconciles:
            raise DataError(f"prepare {split}: counts do not reconcile: {summary}")
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


def summary_of_entry(entry: prepared.PreparedEntry) -> PrepareSummary:
    """The counts recorded in a cache entry's meta.json."""
    meta = entry.meta
    return PrepareSummary(
        input_rows=int(meta["input_rows"]),
        prepared=int(meta["prepared"]),
        rejected=int(meta["rejected"]),
        by_reason=dict(meta.get("by_reason", {})),
    )


# ----------------------------------------------------------------------------------------------------------------
# Batches for the trainer


def covering_data_config() -> Any:
    """A Ray Train DataConfig whose worker shards together hold every prepared example.

    Ray's default splits with `equal=True`, which silently drops up to `num_workers - 1` examples per epoch so
    that every rank sees the same row count. We prefer every example trained on; shards then differ by at most a
    few rows, so the training loop must agree its step count across ranks (it cannot assume equal batch counts).
    """
    from ray.train import DataConfig

    class CoveringDataConfig(DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):  # type: ignore[override]
            output: list[dict[str, Any]] = [{} for _ in range(world_size)]
            to_split = set(datasets) if self._datasets_to_split == "all" else set(self._datasets_to_split)
            hints = worker_node_ids if self._enable_shard_locality else None
            for name, dataset in datasets.items():
                if dataset.name is None:
                    dataset.set_name(name)
                dataset = dataset.copy(dataset)
                dataset.context.execution_options = self._resolve_execution_options(name)
                if name in to_split:
                    shards = dataset.streaming_split(world_size, equal=False, locality_hints=hints)
                    for rank, shard in enumerate(shards):
                        output[rank][name] = shard
                else:
                    for rank in range(world_size):
                        output[rank][name] = dataset.iterator()
            return output

    return CoveringDataConfig()


def rows_from_batch(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """A column batch from `iter_batches(batch_format="numpy")` → one dict per example."""
    names = list(batch)
    count = len(batch[names[0]]) if names else 0
    return [{name: batch[name][i] for name in names} for i in range(count)]


def collate_rows(
    batch: dict[str, Any], processor: Phi3VProcessor, padding_side: str = "right"
) -> dict[str, Any]:
    """Model-ready tensors from one `iter_batches` batch: ids/labels padded to a multiple of 8, canvases batched."""
    examples = rows_from_batch(batch)
    return processor.collate(
        [
            {
                "input_ids": example["input_ids"],
                "labels": example.get("labels"),
                "pixel_values": example["pixel_values"],
                "image_size": example["image_size"],
            }
            for example in examples
        ],
        padding_side=padding_side,
    )


@dataclass
class PaddingReport:
    """Running share of padded token positions over the batches yielded so far."""

    padded_positions: int = 0
    total_positions: int = 0

    def add(self, lengths: Sequence[int], pad_to_multiple_of: int = 8) -> None:
        """Count one batch whose sequences have these lengths."""
        if not lengths:
            return
        longest = math.ceil(max(lengths) / pad_to_multiple_of) * pad_to_multiple_of
        self.total_positions += longest * len(lengths)
        self.padded_positions += longest * len(lengths) - sum(lengths)

    @property
    def share(self) -> float:
        """Padded positions / all positions (0 before any batch)."""
        return self.padded_positions / self.total_positions if self.total_positions else 0.0


def iter_example_batches(
    dataset: Any,
    *,
    batch_size: int,
    length_grouping: bool = True,
    buffer_batches: int = 8,
    report: PaddingReport | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Lists of examples from a dataset or a worker's shard; with grouping, similar canvases share a batch.

    Grouping looks only `buffer_batches` batches ahead, so it keeps streaming and keeps the shard's order roughly
    intact (a full sort would wait for the whole epoch).
    """
    from phi3v_ray.model.processing import group_by_grid

    window = batch_size * (buffer_batches if length_grouping else 1)
    for column_batch in dataset.iter_batches(batch_size=window, batch_format="numpy"):
        examples = rows_from_batch(column_batch)
        if length_grouping:
            groups = group_by_grid(examples, batch_size)
        else:
            groups = [examples[i : i + batch_size] for i in range(0, len(examples), batch_size)]
        for group in groups:
            if report is not None:
                report.add([len(example["input_ids"]) for example in group])
            yield group
