"""Weights & Biases tracking for training runs: rank 0 only, explicit id/group/dir, offline without an API key.

Ray's `setup_wandb` starts a run on every Train V2 worker and writes into node-local temp dirs, so the loop calls
`start_tracking` itself and only rank 0 gets a real run. The API key is read by wandb from WANDB_API_KEY; nothing
here ever copies it into a config, a log line or a checkpoint. Every run this project starts (training, sweep
summary, evaluation, sealing) is opened by `open_run`, so mode, group, directory and settings follow one rule.

A run must read back complete however its trial ends. W&B writes an offline run's `.wandb` file from its own
`wandb-core` process, and only every `x_transaction_log_flush_interval` (15 s by default) or at `finish()`; Ray
kills a stopped or failed trial's workers within seconds, so without care the file held only its 7-byte header.
Three rules close that gap: each step's row is committed as one record before the step is reported to Ray (after
that report the trial may be stopped), the writer flushes every `FLUSH_INTERVAL_S`, and whoever outlives the trial
(the sweep driver, the `train` command) seals a run that has no exit record with `seal_run`. `finish_run` returns
only once the exit record is on disk, so nothing reports a run as written before W&B has written it.

A run directory may be a bucket URI (a sweep on `run.storage_path: s3://...`): W&B then writes to a local staging
folder and each run folder is mirrored to the bucket once its exit record is written (phi3v_ray.wandb_mirror).
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from phi3v_ray.config import WandbSection
from phi3v_ray.errors import ConfigError
from phi3v_ray.logged_history import REPLAYED_KEY, LoggedRow, scalar_metrics
from phi3v_ray.storage import is_uri, location
from phi3v_ray.wandb_mirror import local_run_directory, mirror_run_folder

logger = logging.getLogger(__name__)

# Seconds between W&B's flushes of a run's `.wandb` file: short, so a killed process loses at most this much.
FLUSH_INTERVAL_S = 0.2
# How long a finished run may take to reach the disk before we stop waiting and say so.
FINISH_WAIT_S = 60.0


def fetch_mirrored_runs(directory: str, run_id: str) -> None:
    """Bring a URI's folders of `run_id` into the local staging folder (a run another node wrote, to seal it here)."""
    if not is_uri(directory):
        return
    from phi3v_ray.storage import download_tree

    staging, remote = local_run_directory(directory), location(directory).join("wandb")
    for info in remote.list():
        name = info.path.rsplit("/", 1)[-1]
        match = _RUN_FOLDER.match(name)
        if match and (match.group(2) == run_id or match.group(2).startswith(run_id + "-")):
            download_tree(remote.join(name), staging / "wandb" / name)


def run_settings() -> Any:
    """wandb.Settings shared by every run this project starts: quiet, no system stats, frequent flushes."""
    import wandb

    extra: dict[str, Any] = {}
    if "x_transaction_log_flush_interval" in type(wandb.Settings()).model_fields:  # wandb >= 0.22
        extra["x_transaction_log_flush_interval"] = FLUSH_INTERVAL_S
    return wandb.Settings(console="off", x_disable_stats=True, silent=True, **extra)


def open_run(
    section: WandbSection,
    run_config: dict[str, Any],
    *,
    directory: str | os.PathLike[str],
    group: str | None,
    run_id: str | None = None,
    name: str | None = None,
    job_type: str | None = None,
) -> Any | None:
    """Start (or, with a `run_id`, resume) a W&B run in `directory`; None when W&B is disabled.

    `wandb.group` from the experiment wins over the caller's default `group`. The config is checked for the API key
    before anything is written.
    """
    mode = resolve_mode(section)
    if mode == "disabled":
        return None
    _assert_no_secret(run_config)
    import wandb

    local = local_run_directory(directory)
    local.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {"resume": "allow", "id": run_id} if run_id else {}
    return wandb.init(
        project=section.project,
        entity=section.entity,
        group=section.group or group,
        name=name,
        job_type=job_type,
        dir=str(local),
        mode=mode,
        config=run_config,
        settings=run_settings(),
        **options,
    )


def finish_run(run: Any, exit_code: int = 0, timeout_s: float = FINISH_WAIT_S) -> Path | None:
    """Finish `run` and wait until its exit record is on disk; returns the run folder, None if it never got there.

    A run staged for a URI is mirrored there once complete (and, incomplete, still mirrored: better than nothing).
    """
    run_dir = Path(run.dir).parent
    run.finish(exit_code=exit_code)
    if not list(run_dir.glob("*.wandb")):
        mirror_run_folder(run_dir)
        return run_dir  # no transaction log to wait for (e.g. a disabled run)
    complete = wait_for_exit_record(run_dir, timeout_s=timeout_s)
    mirror_run_folder(run_dir)
    if not complete:
        logger.warning(
            "W&B run %s: not fully written after %.0f s; its files may be incomplete", run_dir, timeout_s
        )
        return None
    return run_dir


def run_id_for(run_name: str, trial: str | None) -> str:
    """Stable per run (so a retry or re-run appends to the same W&B run) and within W&B's id alphabet."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", trial or run_name)[:64]


@dataclass(frozen=True)
class TrainingRun:
    """Where a training run's W&B run lives: the one rule shared by the loop (which writes it) and its sealers."""

    run_id: str
    group: str
    directory: str

    @classmethod
    def of(cls, section: WandbSection, *, run_name: str, storage_path: str, trial: str | None) -> TrainingRun:
        """The run of `run_name` (or of `trial` in a sweep) under the experiment's wandb section."""
        return cls(
            run_id=run_id_for(run_name, trial),
            group=section.group or run_name,
            directory=section.dir or f"{storage_path}/{run_name}",
        )


def resolve_mode(section: WandbSection) -> str:
    """`auto` means online only when WANDB_API_KEY is set, so a laptop or a test never needs the network."""
    if section.mode != "auto":
        return section.mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def _assert_no_secret(run_config: dict[str, Any]) -> None:
    """Refuse to log a config that somehow carries the API key (e.g. pasted into a --set value)."""
    key = os.environ.get("WANDB_API_KEY")
    if key and key in json.dumps(run_config, default=str):
        raise ConfigError("wandb: the run config contains the W&B API key; pass it only via WANDB_API_KEY")


@dataclass
class Tracker:
    """A W&B run on rank 0, or a no-op on other ranks / when disabled; the loop calls it the same way everywhere."""

    run: Any = None
    pending_step: int | None = None
    pending: dict[str, Any] = field(default_factory=dict)
    history: list[LoggedRow] = field(default_factory=list)  # committed rows' scalars, for each checkpoint

    @property
    def active(self) -> bool:
        """True on the one process that writes to W&B."""
        return self.run is not None

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Add to step `step`'s row (the optimizer step, so resumed runs line up); `commit` writes the row."""
        if self.run is None:
            return
        if self.pending_step is not None and step != self.pending_step:
            self.commit()
        self.pending_step = step
        self.pending.update(metrics)

    def commit(self) -> None:
        """Send the current step's row to W&B as one committed record: call it before reporting the step to Ray."""
        if self.run is not None and self.pending_step is not None:
            self.run.log(self.pending, step=self.pending_step, commit=True)
            self.history.append({"step": self.pending_step, "metrics": scalar_metrics(self.pending)})
        self.pending_step, self.pending = None, {}

    def replay(self, rows: list[LoggedRow]) -> None:
        """Re-send the rows a resumed checkpoint carries (phi3v_ray.logged_history), before the first new step.

        An online run resumed from the server already holds the steps below its `step` counter (W&B would refuse
        them with a warning each), so only the rest are sent; an offline attempt is a new folder (counter 0) and
        gets them all, merged by step with the attempt that died.
        """
        if self.run is None:
            return
        self.history = list(rows)
        first_missing = int(getattr(self.run, "step", 0) or 0)
        for row in rows:
            if row["step"] >= first_missing:
                self.run.log(row["metrics"] | {REPLAYED_KEY: 1}, step=row["step"], commit=True)

    def log_predictions(self, rows: Sequence[dict[str, Any]], step: int) -> None:
        """A validation table: product image, generated answer, true answer (rows from the loop's sampler)."""
        if self.run is None or not rows:
            return
        import wandb

        table = wandb.Table(columns=["step", "product_code", "image", "generated", "expected", "exact_match"])
        for row in rows:
            table.add_data(
                step,
                str(row["product_code"]),
                wandb.Image(_canvas_to_hwc(row["pixel_values"], row["image_size"])),
                row["generated"],
                row["expected"],
                row["generated"].strip() == row["expected"].strip(),
            )
        self.log({"val/predictions": table}, step=step)

    def finish(self, exit_code: int = 0) -> None:
        """Commit, close and wait until the run is complete on disk; non-zero marks it failed."""
        if self.run is not None:
            self.commit()
            finish_run(self.run, exit_code=exit_code)
            self.run = None


def _canvas_to_hwc(pixel_values: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
    """The uint8 [3, H, W] canvas cut to its real extent, as H x W x 3 for wandb.Image."""
    height, width = int(image_size[0]), int(image_size[1])
    return np.ascontiguousarray(
        np.asarray(pixel_values, dtype=np.uint8)[:, :height, :width].transpose(1, 2, 0)
    )


def start_tracking(
    section: WandbSection,
    run_config: dict[str, Any],
    *,
    rank: int,
    run_id: str,
    run_name: str,
    group: str | None,
    directory: str,
) -> Tracker:
    """Start (or resume, same id) the W&B run on rank 0; every other rank gets a no-op Tracker."""
    if rank != 0:
        return Tracker()
    run = open_run(section, run_config, directory=directory, group=group, run_id=run_id, name=run_name)
    if run is None:
        return Tracker()
    run.define_metric("train/*", step_metric="trainer/step")
    return Tracker(run=run)


def seal_run(
    section: WandbSection,
    location: TrainingRun,
    run_config: dict[str, Any],
    *,
    end_state: str,
    exit_code: int,
) -> bool:
    """Give a run whose writer died (no exit record) its config, group, final state and exit; True if it sealed.

    The sealing attempt is a resume of the same id, so `wandb sync` merges it with the killed attempt's history.
    """
    if resolve_mode(section) == "disabled":
        return False
    fetch_mirrored_runs(location.directory, location.run_id)
    local = local_run_directory(location.directory)
    attempts = find_offline_runs(local, location.run_id)
    if attempts and has_exit_record(attempts[-1]):
        for attempt in attempts:  # a run the driver's node wrote but nobody mirrored yet
            mirror_run_folder(attempt)
        return False
    run = open_run(
        section, run_config, directory=location.directory, group=location.group, run_id=location.run_id
    )
    run.summary["trial/end_state"] = end_state
    finish_run(run, exit_code=exit_code)
    for attempt in attempts:  # the killed attempt's history, which only this node's disk held
        mirror_run_folder(attempt)
    return True


# ---- is a run on disk complete? ------------------------------------------------------------------------------------
# The minimum of W&B's `.wandb` file format that `finish_run` and `seal_run` need: find a run id's attempts and tell
# whether the latest holds its exit record. (tests/support/wandb_files.py reads config and history on top of
# `run_records`.)

_HEADER = struct.Struct("<4sHB")  # ":W&B", magic 0xBEE1, version
_RECORD = struct.Struct("<IHB")  # crc32, length, type (leveldb log format)
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def run_records(path: Path) -> Iterator[bytes]:
    """Yield the raw protobuf payloads of a `.wandb` file (leveldb log blocks, W&B header first)."""
    data = path.read_bytes()
    if len(data) < _HEADER.size:  # just created: the writer has not flushed the header yet
        return
    ident, magic, _version = _HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path}: not a W&B run file")
    offset, pending = _HEADER.size, b""
    while offset + _RECORD.size <= len(data):
        room = _BLOCK - offset % _BLOCK
        if room < _RECORD.size:  # block tail too small for a header is zero padding
            offset += room
            continue
        _crc, length, kind = _RECORD.unpack_from(data, offset)
        start = offset + _RECORD.size
        if start + length > len(data):  # the writer is mid-record: what follows is not on disk yet
            return
        chunk = data[start : start + length]
        offset = start + length
        if kind == 0 and length == 0:
            continue
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""


def run_file(run_dir: str | os.PathLike[str]) -> Path:
    """The `.wandb` transaction log of one run folder (one attempt)."""
    files = sorted(Path(run_dir).glob("*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_dir}: no .wandb file")
    return files[0]


def has_exit_record(run_dir: str | os.PathLike[str]) -> bool:
    """True once the run folder's `.wandb` file holds the exit record (wandb writes it last, after finish())."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb

    for payload in run_records(run_file(run_dir)):
        record = pb.Record()
        try:
            record.ParseFromString(payload)
        except DecodeError:  # a record caught mid-write by a live writer: the exit record is not there yet
            return False
        if record.WhichOneof("record_type") == "exit":
            return True
    return False


def wait_for_exit_record(run_dir: str | os.PathLike[str], timeout_s: float = FINISH_WAIT_S) -> bool:
    """Poll until the exit record is on disk; False if it is still missing after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not has_exit_record(run_dir):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def find_offline_runs(directory: str | os.PathLike[str], run_id: str) -> list[Path]:
    """All run folders (offline or online) of one run id under `directory`, oldest attempt first.

    A resumed or sealed run writes one folder per attempt, named `[offline-]run-<YYYYmmdd_HHMMSS>-<id>`.
    """
    folders = [
        file.parent
        for file in Path(directory).rglob(f"run-{run_id}.wandb")
        if _RUN_FOLDER.match(file.parent.name)
    ]
    return sorted(folders, key=_attempt_order)


# `[offline-]run-<YYYYmmdd_HHMMSS>-<id>[-<n>]`: wandb adds `-<n>` when a folder of that second already exists.
_RUN_FOLDER = re.compile(r"^(?:offline-)?run-(\d{8}_\d{6})-(.+)$")


def _attempt_order(folder: Path) -> tuple[str, int]:
    """Start time, then wandb's same-second index (none first), so the latest attempt sorts last."""
    match = _RUN_FOLDER.match(folder.name)
    assert match is not None
    stamp, rest = match.groups()
    run_id = next(folder.glob("run-*.wandb")).stem.removeprefix("run-")
    suffix = rest[len(run_id) + 1 :] if rest.startswith(run_id + "-") else ""
    return stamp, int(suffix) if suffix.isdigit() else -1
