"""Weights & Biases tracking for training runs: rank 0 only, explicit id/group/dir, offline without an API key.

Ray's `setup_wandb` starts a run on every Train V2 worker and writes into node-local temp dirs, so the loop calls
`start_tracking` itself and only rank 0 gets a real run. The API key is read by wandb from WANDB_API_KEY; nothing
here ever copies it into a config, a log line or a checkpoint. `read_offline_run` reads an offline run's `.wandb`
file back (run config + history) with wandb's own protobuf records, so tests assert on what W&B actually stored.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from phi3v_ray.config import WandbSection
from phi3v_ray.errors import ConfigError


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

    @property
    def active(self) -> bool:
        """True on the one process that writes to W&B."""
        return self.run is not None

    def log(self, metrics: dict[str, float], step: int) -> None:
        """Per-step scalars; `step` is the optimizer step so resumed runs line up."""
        if self.run is not None:
            self.run.log(metrics, step=step)

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
        self.run.log({"val/predictions": table}, step=step)

    def finish(self, exit_code: int = 0) -> None:
        """Flush and close the run (offline runs are complete on disk after this); non-zero marks it failed."""
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
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
    mode = resolve_mode(section)
    if rank != 0 or mode == "disabled":
        return Tracker()
    _assert_no_secret(run_config)
    import wandb

    Path(directory).mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=section.project,
        entity=section.entity,
        group=section.group or group,
        id=run_id,
        name=run_name,
        dir=directory,
        mode=mode,
        config=run_config,
        resume="allow",
        settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
    )
    run.define_metric("train/*", step_metric="trainer/step")
    return Tracker(run=run)


# ---- reading offline runs back -----------------------------------------------------------------------------------

_HEADER = struct.Struct("<4sHB")  # ":W&B", magic 0xBEE1, version
_RECORD = struct.Struct("<IHB")  # crc32, length, type (leveldb log format)
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    """What an offline run stored: its config and every history row (step -> logged keys)."""

    run_id: str
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = False  # the run's exit record is on disk (wandb's writer may lag finish() by a moment)
    exit_code: int | None = None


def _records(path: Path) -> Iterator[bytes]:
    """Yield the raw protobuf payloads of a `.wandb` file (leveldb log blocks, W&B header first)."""
    data = path.read_bytes()
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


def _decode_value(value_json: str) -> Any:
    return json.loads(value_json)


def read_offline_run(run_dir: str | os.PathLike[str]) -> OfflineRun:
    """Parse `<dir>/offline-run-*/run-<id>.wandb` into config + history using wandb's protobuf Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    run_path = Path(run_dir)
    files = sorted(run_path.glob("*.wandb"))
    if not files:
        raise FileNotFoundError(f"{run_path}: no .wandb file")
    result = OfflineRun(run_id=files[0].stem.removeprefix("run-"))
    for payload in _records(files[0]):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            for item in record.run.config.update:
                result.config[item.key] = _decode_value(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                result.config[item.key] = _decode_value(item.value_json)
        elif kind == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = _decode_value(item.value_json)
            result.history.append(row)
        elif kind == "exit":
            result.complete, result.exit_code = True, record.exit.exit_code
    # wandb wraps each config entry as {"value": ..., "desc": ...}
    result.config = {
        key: (value["value"] if isinstance(value, dict) and "value" in value else value)
        for key, value in result.config.items()
    }
    return result


def read_complete_offline_run(run_dir: str | os.PathLike[str], timeout_s: float = 30.0) -> OfflineRun:
    """`read_offline_run`, waiting until the run's exit record has reached the disk."""
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        run = read_offline_run(run_dir)
        if run.complete or time.monotonic() > deadline:
            return run
        time.sleep(0.2)


def find_offline_runs(directory: str | os.PathLike[str], run_id: str) -> list[Path]:
    """All offline-run folders for one run id under `directory` (a resumed run writes one folder per attempt)."""
    return sorted(Path(directory).rglob(f"offline-run-*-{run_id}"))
