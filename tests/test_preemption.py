"""A spot node's preemption notice: the training run checkpoints at once, restarts elsewhere and redoes no step.

A real three-node Ray cluster on loopback (a head with no CPUs, like cluster.yaml's, and two worker nodes, each its
own `ray start`). The notice is what a spot reclaim sends: SIGTERM to the `ray start` of the worker node that runs
the training worker, which makes Ray drain that node (reason PREEMPTION) for RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S
before it stops its processes. Ray Train's preemption watcher sees the drain and tells the workers
(`ray.train.get_preemption_info`); the loop saves a checkpoint at the step it is on and trains no further until Ray
Train restarts the group on the other node from that checkpoint.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from phi3v_ray.logged_history import REPLAYED_KEY
from phi3v_ray.tracking import find_offline_runs

from support.ray_cluster import TwoNodeCluster, multi_node_cluster, wait_for_node_state
from support.schedule_reference import undisturbed_lrs
from support.wandb_files import read_offline_run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DRIVER = Path(__file__).parent / "support" / "train_driver.py"
MAX_STEPS = 60
DRAIN_S = 10  # the node's notice period (AWS gives ~120 s; short here so the test is quick)
RUN_NAME = "spot"


@pytest.fixture(scope="module")
def spot_cluster() -> Iterator[TwoNodeCluster]:
    yield from multi_node_cluster(
        workers=2,
        worker_cpus=2,
        extra_env={
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": str(DRAIN_S),
            "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "0.5",
        },
    )


def _train_rows(wandb_dir: Path) -> list[list[dict]]:
    """The training rows each attempt of the run trained and logged, attempt by attempt (files still being written
    are read as far as they go; rows a restart re-sent from its checkpoint are not its own)."""
    attempts = []
    for folder in find_offline_runs(wandb_dir, RUN_NAME):
        try:
            history = read_offline_run(folder).history
        except Exception:  # noqa: BLE001 - a record half-written this instant; the next poll reads it
            history = []
        attempts.append([row for row in history if "train/loss" in row and REPLAYED_KEY not in row])
    return attempts


def _train_loss_steps(wandb_dir: Path) -> list[list[int]]:
    """The steps each attempt logged a training loss for."""
    return [[int(row["trainer/step"]) for row in rows] for rows in _train_rows(wandb_dir)]


def _worker_logs(cluster: TwoNodeCluster, lines: int = 15) -> str:
    """The last lines of the cluster's most recently written worker logs (what a stuck run was doing)."""
    logs = sorted(cluster.temp_dir.glob("session_*/logs/worker-*"), key=lambda p: p.stat().st_mtime)[-4:]
    return "\n".join(
        f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) for log in logs
    )


def _train_worker_node(cluster: TwoNodeCluster) -> str:
    actors = [a for a in cluster.state("actors", state="ALIVE") if "TrainWorker" in a.get("class_name", "")]
    nodes = {actor["node_id"] for actor in actors}
    assert len(nodes) == 1, actors  # one training worker node (PACK placement of the run's workers)
    return nodes.pop()


def _reference_lrs(overrides: list[str], tmp_path: Path) -> dict[int, float]:
    """step -> the learning rate an undisturbed run reports after that step (its schedule, stepped alone)."""
    from test_train_support import demo_config

    return undisturbed_lrs(demo_config(tmp_path / "reference", *overrides).optim, MAX_STEPS)


def test_a_preemption_notice_checkpoints_at_once_and_the_restart_redoes_no_step(
    spot_cluster: TwoNodeCluster, tmp_path: Path
) -> None:
    overrides = [
        f"run.name={RUN_NAME}",
        f"run.max_steps={MAX_STEPS}",
        "run.checkpoint_every=1000",  # no cadence checkpoint before the end: only the notice can make one
        "run.eval_every=1000",
        "run.keep_best=5",
        "run.val_generate_samples=0",
        "scaling.num_workers=2",
        "data.length_grouping=false",
        "optim.micro_batch=2",
    ]
    result_file = tmp_path / "result.json"
    env = {
        **spot_cluster.env,
        "RAY_ADDRESS": spot_cluster.gcs_address,
        "PYTHONPATH": str(Path(__file__).parent),
    }
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(
        [sys.executable, str(DRIVER), str(result_file), str(tmp_path), *overrides],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 600
        while not any(len(steps) >= 3 for steps in _train_loss_steps(tmp_path / "wandb")):
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, (
                f"training never reached step 3:\n{_worker_logs(spot_cluster)}"
            )
            time.sleep(0.5)
        victim_id = _train_worker_node(spot_cluster)
        victim = spot_cluster.worker_on(victim_id)
        assert victim is not None, "the training workers run on the head, which is never a spot node"
        victim.process.send_signal(signal.SIGTERM)  # the preemption notice
        noticed_by = max(_train_loss_steps(tmp_path / "wandb")[0])
        driver.wait(timeout=600)
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    output = (tmp_path / "driver.log").read_text()
    assert driver.returncode == 0, output[-4000:]
    result = json.loads(result_file.read_text())
    wait_for_node_state(spot_cluster, victim_id, "DEAD", timeout_s=120)

    # Ended where an undisturbed run ends: same step, optimizer step and learning rate.
    metrics = result["metrics"]
    reference = _reference_lrs(overrides, tmp_path)
    assert metrics["step"] == MAX_STEPS and metrics["adam_step"] == MAX_STEPS, metrics
    assert metrics["lr"] == pytest.approx(reference[MAX_STEPS], rel=1e-6, abs=1e-12)

    # One checkpoint on the notice (off the cadence), the final one, nothing else.
    saved = sorted(
        int(p.name.split("_")[-1])
        for p in (tmp_path / "runs" / RUN_NAME).glob("checkpoint_*")
        if p.is_dir() and p.name.split("_")[-1].isdigit()
    )
    assert len(saved) == 2 and saved[-1] == MAX_STEPS, saved
    on_notice = saved[0]
    assert noticed_by <= on_notice < MAX_STEPS, (noticed_by, saved)

    # Two attempts under one W&B run id: the first trained up to the notice's checkpoint and no further, the
    # restart went on from the step after it: every step trained exactly once.
    attempts = _train_loss_steps(tmp_path / "wandb")
    assert len(attempts) == 2, attempts
    assert attempts[0] == list(range(1, on_notice + 1)), (on_notice, attempts[0])
    assert attempts[1] == list(range(on_notice + 1, MAX_STEPS + 1)), (on_notice, attempts[1])
    # The restart resumed the schedule where it stood: every step's learning rate is the undisturbed run's.
    logged = {
        int(row["trainer/step"]): row["train/lr"] for rows in _train_rows(tmp_path / "wandb") for row in rows
    }
    assert logged == pytest.approx(reference, rel=1e-6, abs=1e-12)
    first, second = (read_offline_run(folder) for folder in find_offline_runs(tmp_path / "wandb", RUN_NAME))
    assert first.run_id == second.run_id == RUN_NAME and first.complete and second.complete
    assert second.exit_code == 0
