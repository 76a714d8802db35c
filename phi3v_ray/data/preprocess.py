"""Catalog rows → a lazy Ray Data dataset of prepared examples, decoded by an actor pool.

Each actor builds the tokenizer and processor once (`ExamplePreparer`, a class UDF) and applies the per-row rule of
phi3v_ray.data.examples to small blocks of rows, on a pool sized to the cluster's CPUs. The dataset is lazy: Ray
Train streams it into the workers' shards while actors keep decoding, so no split is ever materialised. Rejected
rows leave the stream and go to the rejects log (phi3v_ray.data.rejects) with their reason.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from phi3v_ray.data.actor_retries import map_batches_with_retries
from phi3v_ray.data.examples import ProcessorSettings, prepare_row
from phi3v_ray.data.images import prefetch_image_sources
from phi3v_ray.data.places import place
from phi3v_ray.data.rejects import RejectsLog, write_rejects
from phi3v_ray.data.schema import is_missing
from phi3v_ray.storage import Location, location

if TYPE_CHECKING:
    import ray.data

# Rows per Ray Data block and per UDF call: small enough that a 2-core laptop overlaps decoding with training,
# large enough that per-task overhead stays small next to the HD resize (tens of ms per image). Measured on 2 cores,
# 384 catalog images, 2 actors (steady images/s): 4 rows 66, 8 rows 73-83, 16 rows 86-88, 32 rows 90-98; 16 keeps a
# block of official-size canvases near 80 MB, under Ray Data's 128 MB target block size.
DEFAULT_ROWS_PER_BLOCK = 16
# Concurrent object GETs per actor: enough to cover a block of 16 rows at S3's ~20-50 ms per request while the
# actor decodes; local files are not prefetched (PIL reads them lazily and the page cache is already concurrent).
FETCH_THREADS = 8
# Lost actors and their batches are retried (phi3v_ray.data.actor_retries). A retried batch cannot double count: its
# rejects file is named after its row ids (overwritten, not added), and its examples reach the writer only from the
# attempt that finished.

# The columns an actor reads; the rest of a split row never leaves the driver.
_INPUT_COLUMNS = (
    "row_id",
    "product_code",
    "title",
    "category3_code",
    "full_price",
    "local_image_path",
    "status",
)


class ExamplePreparer:
    """Ray Data class UDF: holds one processor per actor and turns batches of catalog rows into examples.

    Rejects are written by the actor as small parquet files named after their row ids, so a retried batch
    overwrites its own file instead of double counting, and the training stream carries only good rows. Images and
    the rejects folder may be local paths or object URIs; the actor opens both through phi3v_ray.storage.
    """

    def __init__(self, settings: ProcessorSettings, *, prompt_only: bool, rejects_dir: str) -> None:
        self.settings = settings
        self.prompt_only = prompt_only
        self.rejects_dir: Location = location(rejects_dir)
        self.processor = settings.build_processor()
        self.fetchers = ThreadPoolExecutor(max_workers=FETCH_THREADS, thread_name_prefix="image-fetch")

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, Any]]:
        """Prepare one batch; yields the examples (nothing when every row was rejected)."""
        examples, rejects = [], []
        rows = _batch_rows(batch)
        fetches = prefetch_image_sources([_image_path(row) for row in rows], self.fetchers)
        for row, fetch in zip(rows, fetches, strict=True):
            example, reject = prepare_row(
                row,
                self.processor,
                prompt_only=self.prompt_only,
                max_pixels=self.settings.max_pixels,
                image_source=None if fetch is None else fetch.result(),
                max_tokens=self.settings.max_example_tokens,
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
        write_rejects(records, self.rejects_dir.join(f"rejects-{row_ids[0]:09d}-{digest}.parquet"))


def _image_path(row: dict[str, Any]) -> str | None:
    """The row's image location as text, or None when it has none (the per-row rule reports that)."""
    path = row.get("local_image_path")
    return None if is_missing(path) else str(path)


def _batch_rows(batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """A numpy column batch → one dict of plain Python values per row (what the per-row rule expects)."""
    names = list(batch)
    count = len(batch[names[0]]) if names else 0
    return [{name: _plain(batch[name][i]) for name in names} for i in range(count)]


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def prepare_dataset(
    rows: pd.DataFrame,
    settings: ProcessorSettings,
    *,
    prompt_only: bool,
    rejects_dir: str | os.PathLike[str] | Location,
    num_actors: int | None = None,
    cpus_per_actor: float = 1.0,
    rows_per_block: int = DEFAULT_ROWS_PER_BLOCK,
) -> tuple[ray.data.Dataset, RejectsLog]:
    """Lazy dataset of prepared examples for `rows` (which carry `row_id`), plus where its rejects go.

    `num_actors` fixes the pool size (benchmarks, tests); by default the pool autoscales with the cluster.
    """
    import ray

    rejects_place = place(rejects_dir)
    rejects_location = location(rejects_place)
    rejects_location.delete()
    rejects_location.make_dirs()
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
    dataset = map_batches_with_retries(
        ray.data.from_pandas(chunks or [inputs]),
        ExamplePreparer,
        fn_constructor_kwargs={
            "settings": settings,
            "prompt_only": prompt_only,
            "rejects_dir": rejects_location.uri,
        },
        batch_size=None,
        batch_format="numpy",
        compute=pool,
        num_cpus=cpus_per_actor,
    )
    return dataset, RejectsLog(directory=rejects_place, input_rows=len(rows))
