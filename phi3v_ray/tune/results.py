"""A sweep's outcome per trial: hyperparameters, status, best validation loss, best checkpoint.

Tune marks a trial that ASHA stopped exactly like one that ran to the end (TERMINATED, done=True), so the trial
driver reports one last result carrying FINISHED_KEY after its TorchTrainer returns; a terminated trial without it
was stopped early. The best checkpoint is read from the trial's own metric history (Tune holds no checkpoint for
a Train-backed trial; the paths come from TuneReportCallback's `checkpoint_path`), so it is the checkpoint whose
validation was best, not merely the last one. Train reports a checkpoint as a path inside the storage filesystem
(`bucket/runs/...` for S3), so checkpoints are looked up through the sweep's storage Location and written as URIs.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from phi3v_ray.storage import Location, location

FINISHED_KEY = "trial_finished"
CHECKPOINT_KEY = "checkpoint_path"
STEP_KEY = "step"
VAL_STEP_KEY = "val_step"
FINISHED, STOPPED_EARLY, FAILED = "finished", "stopped early", "failed"
INTERRUPTED, NOT_RUN = "interrupted", "not run"
# Tune trial states that mean "the sweep stopped before this trial ended" (a resume runs it).
UNFINISHED_TUNE_STATES = ("PENDING", "RUNNING", "PAUSED")
RESULTS_FILE = "sweep_results.csv"


@dataclass
class TrialRow:
    """One line of sweep_results.csv."""

    trial_id: str
    hyperparameters: dict[str, Any]
    status: str
    reason: str = ""
    best_metric: float | None = None
    best_step: int | None = None
    validations: int = 0
    best_checkpoint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BestPoint:
    """The best validated point of one trial's history, and the checkpoint saved with (or after) it."""

    metric: float | None
    step: int | None
    checkpoint: str | None
    validations: int


def best_point(
    history: pd.DataFrame | None, metric: str, mode: str, storage: Location | None = None
) -> BestPoint:
    """Best `metric` in a trial's history, the step it was validated at (`val_step`), and its checkpoint.

    A checkpoint reported in the same result as the best validation wins; failing that, the first checkpoint
    reported at or after that step (the weights that scored it), and only checkpoints still in storage count,
    because Train deletes all but `keep_best` of them. `storage` is where the sweep lives (None: a local path).
    """
    if history is None or history.empty or metric not in history:
        return BestPoint(None, None, None, 0)
    scored = history[history[metric].notna()]
    if scored.empty:
        return BestPoint(None, None, None, 0)
    best_index = scored[metric].idxmin() if mode == "min" else scored[metric].idxmax()
    best = scored.loc[best_index]
    step_key = VAL_STEP_KEY if VAL_STEP_KEY in scored else STEP_KEY
    best_step = int(best[step_key]) if step_key in scored and pd.notna(best[step_key]) else None
    checkpoint = _checkpoint_for(history, best_index, metric, mode, storage)
    # Every report repeats the latest validation; distinct validation steps count the validations themselves.
    validations = int(scored[VAL_STEP_KEY].nunique()) if VAL_STEP_KEY in scored else int(len(scored))
    return BestPoint(float(best[metric]), best_step, checkpoint, validations)


def _checkpoint_for(
    history: pd.DataFrame, best_index: Any, metric: str, mode: str, storage: Location | None
) -> str | None:
    """The checkpoint of the best row if it still exists, else the best-scoring checkpoint that does (as a URI)."""
    if CHECKPOINT_KEY not in history:
        return None
    with_checkpoint = history[history[CHECKPOINT_KEY].notna() & (history[CHECKPOINT_KEY] != "")].copy()
    with_checkpoint[CHECKPOINT_KEY] = [
        checkpoint_location(str(path), storage).uri for path in with_checkpoint[CHECKPOINT_KEY]
    ]
    existing = with_checkpoint[[_exists(path) for path in with_checkpoint[CHECKPOINT_KEY]]]
    if existing.empty:
        return None
    position = history.index.get_loc(best_index)
    at_or_after = existing[[history.index.get_loc(i) >= position for i in existing.index]]
    if not at_or_after.empty:
        return str(at_or_after.iloc[0][CHECKPOINT_KEY])
    scored = existing[existing[metric].notna()] if metric in existing else existing.iloc[0:0]
    if not scored.empty:
        pick = scored[metric].idxmin() if mode == "min" else scored[metric].idxmax()
        return str(scored.loc[pick, CHECKPOINT_KEY])
    return str(existing.iloc[-1][CHECKPOINT_KEY])


def checkpoint_location(path: str, storage: Location | None) -> Location:
    """A checkpoint path as Train reported it (inside the storage filesystem) → its Location, URI included."""
    if storage is None or not storage.is_remote or "://" in path:
        return location(path)
    scheme = storage.uri.split("://", 1)[0]
    return location(f"{scheme}://{path.lstrip('/')}")


def _exists(path: Any) -> bool:
    """The checkpoint directory (or bucket prefix) is still there: Train deletes all but `keep_best`."""
    return location(str(path)).is_dir()


def trial_row(
    result: Any,
    hyperparameters: Mapping[str, Any],
    metric: str,
    mode: str,
    tune_state: str | None = None,
    trial_id: str | None = None,
    *,
    storage: Location | None = None,
) -> TrialRow:
    """A Tune `Result` → TrialRow: failed if it errored, finished if the driver marked it, interrupted if Tune's
    saved state says it never ended, else stopped early (by the scheduler)."""
    metrics = dict(result.metrics or {})
    trial_id = str(trial_id or metrics.get("trial_id") or Path(result.path).name)
    best = best_point(result.metrics_dataframe, metric, mode, storage)
    if result.error is not None:
        status, reason = FAILED, _error_reason(result.error)
    elif tune_state in UNFINISHED_TUNE_STATES and not metrics.get(FINISHED_KEY):
        status, reason = INTERRUPTED, "the sweep stopped before this trial ended; run it again to resume"
    elif metrics.get(FINISHED_KEY):
        status, reason = FINISHED, ""
    elif best.validations or metrics:
        status = STOPPED_EARLY
        reason = f"stopped by the scheduler after {best.validations} validation(s)"
    else:
        status, reason = NOT_RUN, "no result reported"
    return TrialRow(
        trial_id=trial_id,
        hyperparameters=dict(hyperparameters),
        status=status,
        reason=reason,
        best_metric=best.metric,
        best_step=best.step,
        validations=best.validations,
        best_checkpoint=best.checkpoint,
    )


def _error_reason(error: BaseException) -> str:
    """One readable line: the innermost cause's type and first line (Ray wraps errors several times), or our own
    message where the chain holds one (a UserError already says what went wrong and what to change)."""
    from phi3v_ray.errors import UserError

    inner: BaseException = error
    while not isinstance(inner, UserError) and inner.__cause__ is not None and inner.__cause__ is not inner:
        inner = inner.__cause__
    if isinstance(inner, UserError) and inner.args:
        return f"{type(inner).__name__}: {inner.args[0]}"[:600]
    lines = [line.strip() for line in str(inner).splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    reason = f"{type(inner).__name__}: {text}" if text else type(inner).__name__
    return reason[:300]


def columns(hyperparameter_keys: Sequence[str], metric: str) -> list[str]:
    """CSV/table columns: id, the swept keys, status, why, best metric, where it was reached and saved."""
    return [
        "trial_id",
        *hyperparameter_keys,
        "status",
        "reason",
        f"best_{metric}",
        "best_step",
        "validations",
        "best_checkpoint",
    ]


def as_records(
    rows: Iterable[TrialRow], hyperparameter_keys: Sequence[str], metric: str
) -> list[dict[str, Any]]:
    """Rows as plain dicts keyed by `columns(...)`."""
    records = []
    for row in rows:
        record: dict[str, Any] = {"trial_id": row.trial_id}
        record.update({key: row.hyperparameters.get(key) for key in hyperparameter_keys})
        record.update(
            {
                "status": row.status,
                "reason": row.reason,
                f"best_{metric}": row.best_metric,
                "best_step": row.best_step,
                "validations": row.validations,
                "best_checkpoint": row.best_checkpoint or "",
            }
        )
        records.append(record)
    return records


def sort_rows(rows: Iterable[TrialRow], mode: str) -> list[TrialRow]:
    """Best first; trials without a score last, in trial-id order."""

    def key(row: TrialRow) -> tuple[int, float, str]:
        if row.best_metric is None or math.isnan(row.best_metric):
            return (1, 0.0, row.trial_id)
        value = row.best_metric if mode == "min" else -row.best_metric
        return (0, value, row.trial_id)

    return sorted(rows, key=key)


def write_results_csv(
    rows: Sequence[TrialRow],
    path: str | os.PathLike[str] | Location,
    hyperparameter_keys: Sequence[str],
    metric: str,
) -> Location:
    """Write sweep_results.csv (one line per trial, header = `columns`), whole, to a local path or a bucket."""
    header = columns(hyperparameter_keys, metric)
    handle = io.StringIO(newline="")
    writer = csv.DictWriter(handle, fieldnames=header)
    writer.writeheader()
    for record in as_records(rows, hyperparameter_keys, metric):
        writer.writerow({k: ("" if v is None else v) for k, v in record.items()})
    target = location(path)
    target.write_text(handle.getvalue())
    return target


def read_results_csv(path: str | os.PathLike[str] | Location) -> pd.DataFrame:
    """sweep_results.csv back as a DataFrame (tests, the demo, evaluation pickers), from a local path or a bucket."""
    data = location(path).read_bytes()
    return pd.read_csv(io.BytesIO(data), keep_default_na=False, na_values=[""])


def format_table(rows: Sequence[TrialRow], hyperparameter_keys: Sequence[str], metric: str) -> str:
    """A fixed-width text table for the terminal; the checkpoint column shows the path relative to the cwd."""
    header = columns(hyperparameter_keys, metric)
    header = [h for h in header if h != "reason"]
    lines_data = []
    for record in as_records(rows, hyperparameter_keys, metric):
        status = record["status"] + (f" ({record['reason']})" if record["reason"] else "")
        record = {**record, "status": status}
        lines_data.append([_cell(record[h], h) for h in header])
    widths = [max([len(h)] + [len(line[i]) for line in lines_data]) for i, h in enumerate(header)]
    out = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    out.append("  ".join("-" * w for w in widths))
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines_data]
    return "\n".join(out)


def _cell(value: Any, column: str) -> str:
    """Readable numbers: learning rates in scientific notation, losses to 4 decimals, paths shortened."""
    if value is None or value == "":
        return "-"
    if column == "best_checkpoint":
        relative = os.path.relpath(str(value)) if "://" not in str(value) else str(value)
        return relative if not relative.startswith("..") else str(value)
    if isinstance(value, float):
        return f"{value:.3e}" if value != 0 and abs(value) < 1e-2 else f"{value:.4f}"
    return str(value)


def log_sweep_summary(
    rows: Sequence[TrialRow],
    hyperparameter_keys: Sequence[str],
    metric: str,
    mode: str,
    *,
    wandb_section: Any,
    group: str,
    directory: str,
    run_id: str,
) -> str | None:
    """One extra W&B run in the sweep's group (job_type sweep-summary) holding the trials table; returns its id."""
    from phi3v_ray.tracking import finish_run, open_run, resolve_mode

    if resolve_mode(wandb_section) == "disabled":
        return None
    import wandb

    header = columns(hyperparameter_keys, metric)
    table = wandb.Table(columns=header)
    for record in as_records(rows, hyperparameter_keys, metric):
        # W&B types each column from its values: a missing number must be None, never ""
        table.add_data(*[(None if record[h] in ("", None) else record[h]) for h in header])
    run = open_run(
        wandb_section,
        {"sweep": group, "trials": len(rows)},
        directory=directory,
        group=group,
        run_id=run_id,
        name=run_id,
        job_type="sweep-summary",
    )
    run.log({"sweep/trials": table})
    scored = [r for r in rows if r.best_metric is not None]
    if scored:
        best = sort_rows(scored, mode)[0]
        run.summary[f"best_{metric}"] = best.best_metric
        run.summary["best_trial"] = best.trial_id
        run.summary["best_checkpoint"] = best.best_checkpoint or ""
    for status in (FINISHED, STOPPED_EARLY, FAILED, INTERRUPTED):
        run.summary[f"trials_{status.replace(' ', '_')}"] = sum(r.status == status for r in rows)
    return run_id if finish_run(run) is not None else None
