"""Read offline W&B runs back from disk (config, history, summary, exit), so tests assert on what W&B stored.

Test-only: production code needs just "is this run complete?", which phi3v_ray.tracking answers with
`has_exit_record`; this module builds on the same record framing (`tracking.run_records`) and decodes every record
with wandb's own protobuf `Record`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

from phi3v_ray.tracking import FINISH_WAIT_S, find_offline_runs, run_file, run_records


class IncompleteRunError(RuntimeError):
    """An offline run whose exit record never reached the disk (its writer was killed and nobody sealed it)."""


@dataclass
class OfflineRun:
    """What an offline run stored: its config and every history row (step -> logged keys)."""

    run_id: str
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = False  # the run's exit record is on disk (wandb's writer may lag finish() by a moment)
    exit_code: int | None = None
    group: str = ""
    job_type: str = ""
    summary: dict[str, Any] = field(default_factory=dict)


def _items(updates: Any) -> dict[str, Any]:
    """key -> decoded JSON value of a config/summary/history update list (nested keys joined by '/')."""
    return {(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in updates}


def read_offline_run(run_dir: str | os.PathLike[str]) -> OfflineRun:
    """Parse `<dir>/offline-run-*/run-<id>.wandb` into config + history using wandb's protobuf Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    path = run_file(run_dir)
    result = OfflineRun(run_id=path.stem.removeprefix("run-"))
    for payload in run_records(path):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            result.group = result.group or record.run.run_group
            result.job_type = result.job_type or record.run.job_type
            result.config.update(_items(record.run.config.update))
        elif kind == "summary":
            result.summary.update(_items(record.summary.update))
        elif kind == "config":
            result.config.update(_items(record.config.update))
        elif kind == "history":
            result.history.append(_items(record.history.item))
        elif kind == "exit":
            result.complete, result.exit_code = True, record.exit.exit_code
    # wandb wraps each config entry as {"value": ..., "desc": ...}
    result.config = {
        key: (value["value"] if isinstance(value, dict) and "value" in value else value)
        for key, value in result.config.items()
    }
    return result


def read_complete_offline_run(
    run_dir: str | os.PathLike[str], timeout_s: float = FINISH_WAIT_S
) -> OfflineRun:
    """`read_offline_run` once the run's exit record has reached the disk; IncompleteRunError if it never does."""
    deadline = time.monotonic() + timeout_s
    while True:
        run = read_offline_run(run_dir)
        if run.complete:
            return run
        if time.monotonic() > deadline:
            raise IncompleteRunError(
                f"{run_dir}: the W&B run has no exit record after {timeout_s:.0f} s (its writer was killed?)"
            )
        time.sleep(0.2)


def read_run(directory: str | os.PathLike[str], run_id: str, timeout_s: float = FINISH_WAIT_S) -> OfflineRun:
    """Every attempt of one run id merged, as `wandb sync` would upload them; the latest attempt must be complete.

    History rows are keyed by step, so a step a retried attempt logged again holds that attempt's values.
    """
    attempts = find_offline_runs(directory, run_id)
    if not attempts:
        raise FileNotFoundError(f"{directory}: no W&B run files for run id {run_id!r}")
    runs = [read_offline_run(path) for path in attempts[:-1]]
    runs.append(read_complete_offline_run(attempts[-1], timeout_s=timeout_s))
    merged = OfflineRun(run_id=run_id, complete=True, exit_code=runs[-1].exit_code)
    rows: dict[Any, dict[str, Any]] = {}
    for run in runs:
        merged.config.update(run.config)
        merged.summary.update(run.summary)
        merged.group = merged.group or run.group
        merged.job_type = merged.job_type or run.job_type
        for row in run.history:
            rows.setdefault(row.get("_step"), {}).update(row)
    merged.history = [rows[step] for step in sorted(rows, key=lambda s: (s is None, s or 0))]
    return merged
