"""Finding the newest *complete* checkpoint in a run's storage (phi3v_ray.train.resume).

A report lost with a node leaves a checkpoint in storage that Ray Train never registered; a node lost mid-upload
leaves one with a part missing or short. These tests build checkpoint folders the way ranks write them (one local
part per rank, merged in storage) on the local filesystem and on loopback S3, and check which one a restart picks.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pyarrow import fs as pafs

from phi3v_ray.storage import s3_filesystem
from phi3v_ray.train.resume import (
    PARTS_DIR,
    checkpoint_step,
    incomplete_reason,
    newest_complete_checkpoint,
    write_part_record,
)

WORLD = 2


def _part(root: Path, rank: int, step: int) -> Path:
    """One rank's local part of checkpoint `step`, as save_checkpoint leaves it (rank 0 also writes meta.json)."""
    part = root / f"part-{step}-{rank}"
    (part / "engine" / "state").mkdir(parents=True)
    (part / "engine" / "state" / f"zero_pp_rank_{rank}_optim_states.pt").write_bytes(
        bytes(100 + rank) * (step + 1)
    )
    if rank == 0:
        (part / "adapter").mkdir()
        (part / "adapter" / "adapter_model.safetensors").write_bytes(b"w" * 64)
        (part / "meta.json").write_text(json.dumps({"step": step}))
    write_part_record(part, rank=rank, world=WORLD)
    return part


def _checkpoint(run: Path, scratch: Path, step: int, ranks: tuple[int, ...] = (0, 1)) -> Path:
    """Merge the given ranks' parts into run/checkpoint_<step> (what Ray's upload does per rank)."""
    target = run / f"checkpoint_{step:06d}"
    for rank in ranks:
        shutil.copytree(_part(scratch, rank, step), target, dirs_exist_ok=True)
    return target


def test_a_part_record_lists_the_ranks_files_with_sizes_and_not_itself(tmp_path: Path) -> None:
    part = _part(tmp_path, 1, 3)
    record = json.loads((part / PARTS_DIR / "rank-1-of-2.json").read_text())
    assert record["world"] == 2 and record["rank"] == 1
    assert record["files"] == {"engine/state/zero_pp_rank_1_optim_states.pt": 101 * 4}


def test_the_newest_complete_checkpoint_wins_over_newer_broken_ones(tmp_path: Path) -> None:
    run, scratch = tmp_path / "run", tmp_path / "scratch"
    _checkpoint(run, scratch, 4)
    _checkpoint(run, scratch, 8)
    _checkpoint(run, scratch, 12, ranks=(0,))  # rank 1's node died before its upload
    short = _checkpoint(run, scratch, 16)
    (short / "engine" / "state" / "zero_pp_rank_1_optim_states.pt").write_bytes(b"cut")  # upload cut short
    no_meta = _checkpoint(run, scratch, 20)
    (no_meta / "meta.json").unlink()
    (run / "checkpoint_manager_snapshot.json").write_text("{}")  # Ray's own file sits beside the folders
    local = pafs.LocalFileSystem()
    assert "rank(s) [1] of 2" in incomplete_reason(local, str(run / "checkpoint_000012"))
    assert "zero_pp_rank_1_optim_states.pt: 3 bytes in storage" in incomplete_reason(local, str(short))
    assert "meta.json" in incomplete_reason(local, str(no_meta))
    found = newest_complete_checkpoint(local, str(run))
    assert found is not None and found.step == 8 and found.path.endswith("checkpoint_000008")


def test_checkpoints_without_part_records_are_not_resumed_from(tmp_path: Path) -> None:
    run, scratch = tmp_path / "run", tmp_path / "scratch"
    old = _checkpoint(run, scratch, 4)
    shutil.rmtree(old / PARTS_DIR)
    assert "no parts/ records" in incomplete_reason(pafs.LocalFileSystem(), str(old))
    assert newest_complete_checkpoint(pafs.LocalFileSystem(), str(run)) is None
    assert newest_complete_checkpoint(pafs.LocalFileSystem(), str(tmp_path / "absent")) is None


def test_checkpoint_step_reads_only_checkpoint_folder_names() -> None:
    assert checkpoint_step("s3://b/runs/x/checkpoint_000120") == 120
    assert checkpoint_step("/runs/x/checkpoint_000007/") == 7
    assert checkpoint_step("checkpoint_manager_snapshot.json") is None
    assert checkpoint_step("checkpoint_tmp123") is None


def test_the_same_choice_is_made_in_a_bucket(tmp_path: Path, bucket: str) -> None:
    run, scratch = tmp_path / "run", tmp_path / "scratch"
    _checkpoint(run, scratch, 2)
    _checkpoint(run, scratch, 6, ranks=(1,))  # rank 0 (meta.json) never arrived
    s3 = s3_filesystem()
    prefix = bucket.removeprefix("s3://") + "/runs/lost"
    pafs.copy_files(str(run), prefix, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=s3)
    found = newest_complete_checkpoint(s3, prefix)
    assert found is not None and (found.step, found.path) == (2, f"{prefix}/checkpoint_000002")


@pytest.mark.parametrize("world", [1, 3])
def test_a_record_from_another_world_size_is_not_mistaken_for_this_one(tmp_path: Path, world: int) -> None:
    run, scratch = tmp_path / "run", tmp_path / "scratch"
    target = _checkpoint(run, scratch, 4)
    extra = _part(scratch / "other", 0, 4)
    (extra / PARTS_DIR / "rank-0-of-2.json").rename(extra / PARTS_DIR / f"rank-0-of-{world}.json")
    shutil.copytree(extra / PARTS_DIR, target / PARTS_DIR, dirs_exist_ok=True)
    assert "disagree on the worker count" in incomplete_reason(pafs.LocalFileSystem(), str(target))
