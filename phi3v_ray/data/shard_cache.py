"""A Train worker's dataset shard that replays from memory once it has been read in full.

Every pass over a Ray Data shard (each epoch, each validation) starts a new streaming execution: list the files,
read the parquet, decode. On a busy 2-core machine that was 10-30 s per pass, longer than an epoch of the tiny
model's steps (measured in the demo sweep: four epoch starts and four validations cost ~160 s of a 370 s trial).
When a shard fits in `limit_bytes`, the first complete pass keeps its batches and later passes replay them in the
same order, which is what a non-shuffled stream would yield anyway. A shard over the limit just streams every time,
so memory stays bounded on a real cluster with big canvases.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np


def batch_nbytes(batch: dict[str, Any]) -> int:
    """Bytes held by a numpy column batch, counting the arrays inside object (ragged) columns."""
    total = 0
    for column in batch.values():
        if isinstance(column, np.ndarray) and column.dtype != object:
            total += column.nbytes
        else:
            total += sum(getattr(value, "nbytes", 64) for value in column)
    return total


class ReplayableShard:
    """`iter_batches(batch_size=..., batch_format="numpy")` over a shard, from memory after one full pass."""

    def __init__(self, shard: Any, limit_bytes: int) -> None:
        self.shard = shard
        self.limit_bytes = limit_bytes
        self._batches: list[dict[str, Any]] | None = None
        self._batch_size: int | None = None
        self.passes_streamed = 0
        self.passes_replayed = 0

    @property
    def cached(self) -> bool:
        return self._batches is not None

    def iter_batches(self, *, batch_size: int, batch_format: str = "numpy") -> Iterator[dict[str, Any]]:
        if batch_format != "numpy":
            raise ValueError(f"ReplayableShard yields numpy batches only (asked for {batch_format!r})")
        if self._batches is not None and self._batch_size == batch_size:
            self.passes_replayed += 1
            yield from self._batches
            return
        self.passes_streamed += 1
        kept: list[dict[str, Any]] | None = [] if self.limit_bytes > 0 else None
        size = 0
        for batch in self.shard.iter_batches(batch_size=batch_size, batch_format="numpy"):
            if kept is not None:
                size += batch_nbytes(batch)
                if size > self.limit_bytes:
                    kept = None  # too big to hold: this shard streams on every pass
                else:
                    kept.append(batch)
            yield batch
        # Reached only when the caller read the pass to its end: a partial pass is never replayed as a whole one.
        if kept is not None:
            self._batches, self._batch_size = kept, batch_size
