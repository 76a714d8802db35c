"""Which checkpoint a (re)started worker group resumes from: Ray's latest, or a newer complete one in storage.

Ray Train (2.60) registers a checkpoint only when its controller has polled every worker's report, every ~2 s. A
worker's `ray.train.report` returns as soon as its part is uploaded and queued, so training goes on while the report
still waits in the worker's queue. When a node is lost in that window (a spot reclaim a few steps after a
checkpoint) the report dies with the worker: the checkpoint is whole in storage, but the controller restarts the
group from the previous one, or from step 0 (measured: `benchmarks/node_loss.py` restarted at step 1 with
checkpoint_000010 in storage).

So every rank records its own part of a checkpoint (`parts/rank-R-of-W.json`: the files it wrote and their byte
sizes), and a starting group asks storage for the newest checkpoint whose every part is there at full size. That
one wins over Ray's when it is newer. Ray's checkpoint manager does not know it (so it is never among the
`keep_best` candidates Ray deletes), which costs at most one extra folder per lost report.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phi3v_ray.checkpoint import META_FILE

PARTS_DIR = "parts"
_PART = re.compile(r"rank-(\d+)-of-(\d+)\.json")
_CHECKPOINT = re.compile(r"checkpoint_(\d+)")


def write_part_record(directory: str | os.PathLike[str], *, rank: int, world: int) -> Path:
    """List this rank's files (relative path -> bytes) in its local checkpoint part; call after the part is written."""
    root = Path(directory)
    files = {
        path.relative_to(root).as_posix(): path.stat().st_size
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.relative_to(root).parts[0] != PARTS_DIR
    }
    record = root / PARTS_DIR / f"rank-{rank}-of-{world}.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({"rank": rank, "world": world, "files": files}, indent=1))
    return record


def checkpoint_dir_name(step: int) -> str:
    """The folder a step's checkpoint is reported under (`checkpoint_step` reads it back)."""
    return f"checkpoint_{step:06d}"


def checkpoint_step(name: str) -> int | None:
    """The step in a `checkpoint_NNNNNN` folder name (None for anything else)."""
    match = _CHECKPOINT.fullmatch(name.rstrip("/").rsplit("/", 1)[-1])
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class StoredCheckpoint:
    """A complete checkpoint folder in the run's storage."""

    path: str  # filesystem path (no scheme) in the run's pyarrow filesystem
    step: int


def _sizes(filesystem: Any, folder: str) -> dict[str, int]:
    """Every file under `folder` with its size, keyed by path relative to it."""
    from pyarrow import fs as pafs

    infos = filesystem.get_file_info(pafs.FileSelector(folder, recursive=True, allow_not_found=True))
    prefix = folder.rstrip("/") + "/"
    return {info.path[len(prefix) :]: info.size for info in infos if info.type == pafs.FileType.File}


def incomplete_reason(filesystem: Any, folder: str) -> str | None:
    """Why the checkpoint in `folder` cannot be resumed from (a missing or short part), or None if it is complete."""
    sizes = _sizes(filesystem, folder)
    if META_FILE not in sizes:
        return f"no {META_FILE}"
    found = [
        (int(match.group(1)), int(match.group(2)), name)
        for name in sizes
        if name.startswith(f"{PARTS_DIR}/") and (match := _PART.fullmatch(name[len(PARTS_DIR) + 1 :]))
    ]
    if not found:
        return f"no {PARTS_DIR}/ records (written before part records existed, or no part arrived)"
    worlds = {world for _, world, _ in found}
    if len(worlds) != 1:
        return f"part records disagree on the worker count: {sorted(worlds)}"
    (world,) = worlds
    records = {rank: name for rank, _, name in found}
    missing = sorted(set(range(world)) - set(records))
    if missing:
        return f"rank(s) {missing} of {world} never finished their part"
    for rank, name in sorted(records.items()):
        with filesystem.open_input_stream(f"{folder.rstrip('/')}/{name}") as stream:
            listed = json.loads(stream.read())["files"]
        for relative, size in listed.items():
            if sizes.get(relative) != size:
                return f"rank {rank}'s {relative}: {sizes.get(relative)} bytes in storage, {size} written"
    return None


def newest_complete_checkpoint(filesystem: Any, run_path: str) -> StoredCheckpoint | None:
    """The highest-step `checkpoint_*` folder under `run_path` whose every part is whole; None if there is none."""
    from pyarrow import fs as pafs

    entries = filesystem.get_file_info(pafs.FileSelector(run_path, allow_not_found=True))
    folders = [
        (step, info.path)
        for info in entries
        if info.type == pafs.FileType.Directory and (step := checkpoint_step(info.base_name)) is not None
    ]
    for step, path in sorted(folders, reverse=True):
        if incomplete_reason(filesystem, path) is None:
            return StoredCheckpoint(path=path, step=step)
    return None


def choose_resume_checkpoint(ray_checkpoint: Any, rank: int) -> Any:
    """Ray's checkpoint, or a newer complete one from the run's storage; every rank gets rank 0's choice.

    Call on every rank (a broadcast). Returns a `ray.train.Checkpoint` or None.
    """
    import ray.train
    import torch.distributed as dist

    choice: list[Any] = [None]
    if rank == 0:
        storage = ray.train.get_context().get_storage()
        stored = newest_complete_checkpoint(storage.storage_filesystem, storage.experiment_fs_path)
        known = checkpoint_step(ray_checkpoint.path) if ray_checkpoint is not None else None
        if stored is not None and (known is None or stored.step > known):
            choice = [stored.path]
            print(
                f"resuming from {stored.path} (step {stored.step}): complete in storage, newer than the "
                f"checkpoint Ray Train registered ({ray_checkpoint.path if ray_checkpoint else 'none'}); its "
                "report was lost with a node",
                flush=True,
            )
    if dist.is_available() and dist.is_initialized():
        dist.broadcast_object_list(choice, src=0)
    if choice[0] is None:
        return ray_checkpoint
    storage = ray.train.get_context().get_storage()
    return ray.train.Checkpoint(choice[0], filesystem=storage.storage_filesystem)
