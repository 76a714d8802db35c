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
import math
import os
from pathlib import Path
from typing import Any

from phi3v_ray.checkpoint import ENGINE_DIR

HISTORY_FILE = "wandb_history.json"
REPLAYED_KEY = (
    "trainer/replayed"  # 1 on a row a restart re-sent from its checkpoint (it trained nothing then)
)

LoggedRow = dict[str, Any]  # {"step": int, "metrics": {name: number or string}}


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The values of a W&B row that JSON holds as they are (numbers, strings, bools); media and tables dropped."""
    kept: dict[str, Any] = {}
    for key, value in metrics.items():
        if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 0) == 0:
            value = value.item()  # numpy / torch scalars
        if isinstance(value, bool | int | str) or (isinstance(value, float) and math.isfinite(value)):
            kept[key] = value
    return kept


def write_history(checkpoint_dir: str | os.PathLike[str], rows: list[LoggedRow]) -> Path:
    """Write the rows into a local checkpoint part (rank 0's), before its part record lists the files."""
    path = Path(checkpoint_dir) / ENGINE_DIR / HISTORY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, separators=(",", ":")))
    return path


def read_history(checkpoint_dir: str | os.PathLike[str]) -> list[LoggedRow]:
    """The rows a checkpoint carries, in step order (the order they were committed); none for a checkpoint written
    before rows were carried."""
    path = Path(checkpoint_dir) / ENGINE_DIR / HISTORY_FILE
    return json.loads(path.read_text()) if path.is_file() else []
