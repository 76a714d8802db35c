"""The rejects log of one preparation: every row that did not become an example, with a reason.

The log lives in a local folder or an object-store prefix (phi3v_ray.storage), wherever the prepared data goes.

Preparation never drops a row silently. Actors write reject records as small parquet files while the dataset
streams, and once it has been consumed the log reconciles the counts (prepared + rejected = input), so a mismatch
shows up as a loud summary line instead of a quietly smaller training set.
"""

from __future__ import annotations

import fnmatch
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from phi3v_ray.data.places import Place
from phi3v_ray.storage import Location, location

REJECT_SCHEMA = pa.schema(
    [
        pa.field("row_id", pa.int64()),
        pa.field("product_code", pa.int64()),
        pa.field("path", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
    ]
)


def rejects_table(records: Sequence[dict[str, Any]]) -> pa.Table:
    """Reject records → a table with the fixed reject schema (also for zero records)."""
    columns = {name: [record[name] for record in records] for name in REJECT_SCHEMA.names}
    return pa.Table.from_pydict(columns, schema=REJECT_SCHEMA)


def write_rejects(records: Sequence[dict[str, Any]], where: Location) -> None:
    """Write reject records as one parquet file (local or an object) that appears whole or not at all."""
    buffer = io.BytesIO()
    pq.write_table(rejects_table(records), buffer)
    where.write_bytes(buffer.getvalue())


def _read_table(where: Place) -> pa.Table:
    file = location(where)
    return pq.read_table(file.path, filesystem=file.filesystem)


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

    directory: Place
    input_rows: int
    cached_path: Place | None = None

    def read(self) -> pd.DataFrame:
        """All reject records so far, one per rejected row (retried batches deduplicated), sorted by row id."""
        if self.cached_path is not None:
            table = _read_table(self.cached_path)
        else:
            files = [
                file
                for file, _ in location(self.directory).files()
                if fnmatch.fnmatchcase(file.name, "rejects-*.parquet")
            ]
            table = pa.concat_tables([_read_table(f) for f in files]) if files else rejects_table([])
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
