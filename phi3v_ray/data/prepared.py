"""The prepared-split cache: preprocessed examples in parquet, keyed by what produced them.

A sweep runs many trials over the same split; decoding and resizing thousands of photos once per trial wastes
most of the cluster. `phi3v-ray data prepare` writes each split once, and every later run whose catalog rows,
image files and processor settings hash to the same key reads it back instead. The parquet layout is explicit
(`list<int32>` token ids, raw uint8 canvas bytes, `image_size` for the shape), so nothing is pickled and any
parquet reader can inspect it. An entry counts only once `meta.json` exists, and entries are built in a scratch
directory and renamed into place, so a crashed or concurrent writer never leaves a half entry that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from phi3v_ray.data.schema import is_missing

PREPARED_FORMAT = "phi3v-ray-prepared/1"
# Bump when the meaning of a prepared row changes (prompt text, label rule, canvas layout): old entries then miss.
PIPELINE_VERSION = 1

FINGERPRINT_COLUMNS = ("product_code", "title", "category3_code", "full_price", "local_image_path", "status")

EXAMPLE_SCHEMA = pa.schema(
    [
        pa.field("row_id", pa.int64()),
        pa.field("product_code", pa.int64()),
        pa.field("title", pa.string()),
        pa.field("category", pa.string()),
        pa.field("full_price", pa.float64()),
        pa.field("answer", pa.string()),
        pa.field("input_ids", pa.list_(pa.int32())),
        pa.field("labels", pa.list_(pa.int32())),
        pa.field("image_size", pa.list_(pa.int32(), 2)),
        pa.field("pixel_values", pa.large_binary()),
    ]
)


def catalog_fingerprint(rows: pd.DataFrame) -> str:
    """Hash of the split's rows and of each image file's size and modification time.

    File stats rather than bytes: hashing every photo would cost a full read of the catalog, and a refetched or
    edited image changes its stats anyway.
    """
    digest = hashlib.sha256()
    present = [name for name in FINGERPRINT_COLUMNS if name in rows.columns]
    digest.update(json.dumps(present).encode())
    for values in rows[present].itertuples(index=False, name=None):
        digest.update(json.dumps([_json_scalar(v) for v in values]).encode())
        if "local_image_path" in present:
            path = values[present.index("local_image_path")]
            try:
                stat = os.stat(path)
                digest.update(f"{stat.st_size}:{stat.st_mtime_ns}".encode())
            except (OSError, TypeError, ValueError):
                digest.update(b"missing")
    return digest.hexdigest()


def _json_scalar(value: Any) -> Any:
    if is_missing(value):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value if isinstance(value, (int, float, str, bool)) else str(value)


def cache_key(
    *,
    fingerprint: str,
    split: str,
    prompt_only: bool,
    processor_settings: dict[str, Any],
    max_examples: int | None,
) -> str:
    """Short stable key naming one prepared split; every input that changes a prepared row is part of it."""
    material = {
        "format": PREPARED_FORMAT,
        "pipeline_version": PIPELINE_VERSION,
        "fingerprint": fingerprint,
        "split": split,
        "prompt_only": prompt_only,
        "processor": processor_settings,
        "max_examples": max_examples,
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:20]


def entry_name(split: str, prompt_only: bool, key: str) -> str:
    """Directory name of one cache entry, readable at a glance (`train-a1b2…`, `test-prompt-c3d4…`)."""
    return f"{split}-prompt-{key}" if prompt_only else f"{split}-{key}"


def encode_examples(batch: dict[str, Any]) -> pa.Table:
    """Prepared rows (numpy batch) → the explicit parquet layout; the canvas shape is recoverable from image_size."""
    pixel_bytes = []
    for canvas, size in zip(batch["pixel_values"], batch["image_size"], strict=True):
        canvas = np.ascontiguousarray(canvas, dtype=np.uint8)
        if canvas.shape != (3, int(size[0]), int(size[1])):
            raise ValueError(f"pixel_values shape {canvas.shape} does not match image_size {list(size)}")
        pixel_bytes.append(canvas.tobytes())
    columns = {
        "row_id": pa.array(np.asarray(batch["row_id"], dtype=np.int64)),
        "product_code": pa.array(np.asarray(batch["product_code"], dtype=np.int64)),
        "title": pa.array([str(v) for v in batch["title"]], pa.string()),
        "category": pa.array([str(v) for v in batch["category"]], pa.string()),
        "full_price": pa.array(np.asarray(batch["full_price"], dtype=np.float64)),
        "answer": pa.array([str(v) for v in batch["answer"]], pa.string()),
        "input_ids": pa.array([np.asarray(v, np.int32) for v in batch["input_ids"]], pa.list_(pa.int32())),
        "labels": pa.array([np.asarray(v, np.int32) for v in batch["labels"]], pa.list_(pa.int32())),
        "image_size": pa.array(
            [np.asarray(v, np.int32) for v in batch["image_size"]], pa.list_(pa.int32(), 2)
        ),
        "pixel_values": pa.array(pixel_bytes, pa.large_binary()),
    }
    return pa.Table.from_pydict(columns, schema=EXAMPLE_SCHEMA)


def decode_examples(table: pa.Table) -> dict[str, Any]:
    """The parquet layout → prepared rows (numpy arrays), exactly as the pipeline produced them."""
    sizes = [np.asarray(v, dtype=np.int32) for v in table.column("image_size").to_pylist()]
    canvases = [
        np.frombuffer(blob, dtype=np.uint8).reshape(3, int(size[0]), int(size[1]))
        for blob, size in zip(table.column("pixel_values").to_pylist(), sizes, strict=True)
    ]
    return {
        "row_id": table.column("row_id").to_numpy(),
        "product_code": table.column("product_code").to_numpy(),
        "title": np.asarray(table.column("title").to_pylist(), dtype=object),
        "category": np.asarray(table.column("category").to_pylist(), dtype=object),
        "full_price": table.column("full_price").to_numpy(),
        "answer": np.asarray(table.column("answer").to_pylist(), dtype=object),
        "input_ids": _ragged(table.column("input_ids")),
        "labels": _ragged(table.column("labels")),
        "image_size": np.stack(sizes) if sizes else np.zeros((0, 2), np.int32),
        "pixel_values": canvases,
    }


def _ragged(column: pa.ChunkedArray) -> list[np.ndarray]:
    return [np.asarray(v, dtype=np.int32) for v in column.to_pylist()]


@dataclass(frozen=True)
class PreparedEntry:
    """One complete cache entry on disk: examples parquet files, rejects parquet and meta.json."""

    directory: Path
    meta: dict[str, Any]

    @property
    def examples_dir(self) -> Path:
        """Folder of example parquet files (one per written block)."""
        return self.directory / "examples"

    @property
    def rejects_path(self) -> Path:
        """Rejected rows with reasons, same schema as the streaming rejects output."""
        return self.directory / "rejects.parquet"

    def read_rejects(self) -> pd.DataFrame:
        """The rejects table of this entry."""
        return pq.read_table(self.rejects_path).to_pandas()


def find_prepared(root: str | os.PathLike[str], name: str) -> PreparedEntry | None:
    """The complete entry `name` under `root`, or None when absent or unfinished (no meta.json)."""
    directory = Path(root) / name
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != PREPARED_FORMAT:
        return None
    return PreparedEntry(directory=directory, meta=meta)


def scratch_dir(root: str | os.PathLike[str], name: str) -> Path:
    """A fresh private folder next to the final entry, renamed into place by `commit_entry`."""
    path = Path(root) / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    path.mkdir(parents=True)
    return path


def commit_entry(
    scratch: Path, root: str | os.PathLike[str], name: str, meta: dict[str, Any]
) -> PreparedEntry:
    """Write meta.json last and move the scratch folder into place; a concurrent identical entry wins quietly."""
    full_meta = {"format": PREPARED_FORMAT, **meta}
    (scratch / "meta.json").write_text(json.dumps(full_meta, indent=2, sort_keys=True))
    final = Path(root) / name
    try:
        os.rename(scratch, final)
    except OSError:
        # Another writer committed the same key first (same inputs, same content): keep theirs.
        shutil.rmtree(scratch, ignore_errors=True)
        existing = find_prepared(root, name)
        if existing is None:
            raise
        return existing
    return PreparedEntry(directory=final, meta=full_meta)


def count_parquet_rows(directory: Path) -> int:
    """Rows in every parquet file under `directory`, read from footers only."""
    if not directory.is_dir():
        return 0
    return sum(pq.ParquetFile(path).metadata.num_rows for path in sorted(directory.glob("*.parquet")))


def uncompressed_parquet_bytes(directory: Path) -> int:
    """Uncompressed size of every row group under `directory` (footers only): what the split takes in memory."""
    if not directory.is_dir():
        return 0
    total = 0
    for path in sorted(directory.glob("*.parquet")):
        metadata = pq.ParquetFile(path).metadata
        total += sum(metadata.row_group(index).total_byte_size for index in range(metadata.num_row_groups))
    return total
