"""W&B runs read back whole however their process ends: real wandb client, offline, files read back from disk.

A child process plays the rank-0 training worker and is SIGKILLed the way Ray kills a stopped trial's workers; the
test process plays the sweep driver that outlives it and seals the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from phi3v_ray.config import WandbSection
from phi3v_ray.tracking import (
    TrainingRun,
    find_offline_runs,
    has_exit_record,
    run_file,
    seal_run,
    start_tracking,
)

from support.wandb_files import IncompleteRunError, read_offline_run, read_run

SECTION = WandbSection(mode="offline", project="tracking-test")
CONFIG = {"optim": {"lr": 0.25}, "finetune": {"rank": 8}}


def _worker_killed_after_step(directory: Path, run_id: str, steps: int, *, commit_last: bool) -> None:
    """Run a tracker in a child process, log `steps` steps, then SIGKILL the child (no finish, no atexit)."""
    script = textwrap.dedent(
        f"""
        import os, signal, time
        from phi3v_ray.config import WandbSection
        from phi3v_ray.tracking import FLUSH_INTERVAL_S, start_tracking
        tracker = start_tracking(WandbSection(mode="offline", project="tracking-test"), {CONFIG!r}, rank=0,
                                 run_id={run_id!r}, run_name={run_id!r}, group="sweep-g", directory={str(directory)!r})
        for step in range(1, {steps} + 1):
            tracker.log({{"train/loss": 1.0 / step, "trainer/step": step}}, step=step)
            if step < {steps} or {commit_last}:
                tracker.commit()
        # Ray kills a stopped trial only after its report went through the controller, Tune and the scheduler:
        # far longer than W&B's flush interval. A kill within that interval of a commit can lose the row.
        time.sleep(5 * FLUSH_INTERVAL_S)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    # A Ray worker runs its own wandb service; without this the child would join the one this test process already
    # started (wandb passes it on through WANDB_SERVICE) and that service would still hold the dead child's run.
    env = {key: value for key, value in os.environ.items() if key != "WANDB_SERVICE"}
    child = subprocess.run(
        [sys.executable, "-c", script], timeout=300, capture_output=True, text=True, env=env
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]


def test_a_killed_workers_run_is_sealed_with_its_history_config_group_and_end(tmp_path: Path) -> None:
    _worker_killed_after_step(tmp_path, "trial-1", 3, commit_last=True)
    (attempt,) = find_offline_runs(tmp_path, "trial-1")
    # The orphaned wandb-core writer flushes what it received shortly after its client dies: wait for it (bounded).
    deadline = time.monotonic() + 60
    killed = read_offline_run(attempt)
    while len(killed.history) < 3 and time.monotonic() < deadline:
        time.sleep(0.5)
        killed = read_offline_run(attempt)
    assert [row["_step"] for row in killed.history] == [1, 2, 3]  # committed rows reached the disk anyway
    assert not killed.complete  # nothing ended it: exactly the state a stopped trial's run was left in

    location = TrainingRun(run_id="trial-1", group="sweep-g", directory=str(tmp_path))
    assert seal_run(SECTION, location, CONFIG, end_state="stopped early", exit_code=0)

    run = read_run(tmp_path, "trial-1", timeout_s=5)
    assert run.complete and run.exit_code == 0
    assert run.group == "sweep-g"
    assert run.config["optim"] == {"lr": 0.25} and run.config["finetune"] == {"rank": 8}
    assert [row["train/loss"] for row in run.history] == pytest.approx([1.0, 0.5, 1 / 3])
    assert run.summary["trial/end_state"] == "stopped early"


def test_an_unsealed_killed_run_is_refused_by_the_complete_reader(tmp_path: Path) -> None:
    _worker_killed_after_step(tmp_path, "trial-2", 2, commit_last=True)
    with pytest.raises(IncompleteRunError, match="no exit record"):
        read_run(tmp_path, "trial-2", timeout_s=1)


def test_sealing_leaves_a_run_that_finished_by_itself_alone(tmp_path: Path) -> None:
    tracker = start_tracking(
        SECTION, CONFIG, rank=0, run_id="done", run_name="done", group="g", directory=str(tmp_path)
    )
    tracker.log({"train/loss": 0.5}, step=1)
    tracker.finish()
    location = TrainingRun(run_id="done", group="g", directory=str(tmp_path))
    assert not seal_run(SECTION, location, CONFIG, end_state="finished", exit_code=0)
    assert len(find_offline_runs(tmp_path, "done")) == 1
    assert read_run(tmp_path, "done", timeout_s=1).history[0]["train/loss"] == 0.5


def test_rows_logged_at_one_step_arrive_as_one_row_and_finish_returns_a_complete_run(tmp_path: Path) -> None:
    tracker = start_tracking(
        SECTION, CONFIG, rank=0, run_id="rows", run_name="rows", group="g", directory=str(tmp_path)
    )
    tracker.log({"train/loss": 2.0, "trainer/step": 1}, step=1)
    tracker.log({"train/loss": 1.5, "trainer/step": 2}, step=2)
    tracker.log({"val/loss": 1.7, "trainer/step": 2}, step=2)  # validation lands in the same step's row
    tracker.finish()
    (folder,) = find_offline_runs(tmp_path, "rows")
    run = read_offline_run(folder)  # no waiting: finish() returns only once the exit record is on disk
    assert run.complete
    assert [(row["_step"], row.get("train/loss"), row.get("val/loss")) for row in run.history] == [
        (1, 2.0, None),
        (2, 1.5, 1.7),
    ]


def test_a_run_file_caught_mid_write_reads_as_unfinished_instead_of_raising(tmp_path: Path) -> None:
    """CI once read a live `.wandb` file while wandb was appending and died on a half-written record."""
    tracker = start_tracking(
        SECTION, CONFIG, rank=0, run_id="live", run_name="live", group="g", directory=str(tmp_path)
    )
    for step in range(1, 40):
        tracker.log({"train/loss": 1.0 / step}, step=step)
    tracker.finish()
    (folder,) = find_offline_runs(tmp_path, "live")
    whole = run_file(folder).read_bytes()
    assert has_exit_record(folder)
    copy = tmp_path / "copy"
    copy.mkdir()
    for cut in sorted({0, 3, 7, 8, 30, *range(40, len(whole) - 1, max(1, len(whole) // 97)), len(whole) - 1}):
        (copy / "run-live.wandb").write_bytes(whole[:cut])
        assert not has_exit_record(copy), f"a file cut at byte {cut} of {len(whole)} claims to be finished"


def test_attempts_are_found_by_exact_run_id_not_by_a_suffix_of_another(tmp_path: Path) -> None:
    for run_id in ("lora", "burberry-lora"):
        tracker = start_tracking(
            SECTION, CONFIG, rank=0, run_id=run_id, run_name=run_id, group="g", directory=str(tmp_path)
        )
        tracker.finish()
    assert [path.name.endswith("-lora") for path in find_offline_runs(tmp_path, "lora")] == [True]
    assert "burberry" not in find_offline_runs(tmp_path, "lora")[0].name
