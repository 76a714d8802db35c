"""The W&B rows a run has logged so far, carried in each checkpoint so a restart can send them again.

A row is committed to W&B before the step is reported to Ray, but W&B's own writer process (`wandb-core`) puts it
on disk, or on the server, a moment later. When a node goes (a spot reclaim) that writer dies with the worker, and
whatever it had not written yet is gone; the restart resumes after the checkpoint, so those steps would never be
logged again (seen in CI: a sweep trial's step 12 missing after its node was killed right after checkpoint 12).
And on a cluster without a shared disk an offline run's folder lives on the lost node's disk and is never mirrored.

So the checkpoint carries every scalar row rank 0 committed up to its step, and a resumed run re-sends them first
(`Tracker.replay`): merged by step, W&B ends with every step once, whatever the writer had managed. Tables (the
validation predictions) are not carried; a few thousand rows of scalars are a few MB, small beside the weights.
The file sits in the checkpoint's engine/ folder, the resume state that evaluation and export never download.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from phi3v_ray.checkpoint import ENGINE_DIR
from phi3v_ray.tracking import LoggedRow

HISTORY_FILE = "wandb_history.json"


def write_history(checkpoint_dir: str | os.PathLike[str], rows: list[LoggedRow]) -> Path:
    """Write the rows into a local checkpoint part (rank 0's), before its part record lists the files."""
    path = Path(checkpoint_dir) / ENGINE_DIR / HISTORY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, separators=(",", ":")))
    return path


def read_history(checkpoint_dir: str | os.PathLike[str]) -> list[LoggedRow]:
    """The rows a checkpoint carries, in step order; none for a checkpoint written before rows were carried."""
    path = Path(checkpoint_dir) / ENGINE_DIR / HISTORY_FILE
    if not path.is_file():
        return []
    rows = json.loads(path.read_text())
    return sorted(rows, key=lambda row: int(row["step"]))
