"""End-to-end sweeps on the tiny preset, CPU: real Ray Tune + Train + DeepSpeed, real W&B offline runs.

One 4-trial ASHA sweep (module fixture) proves the W&B runs, the results table and its checkpoints, and early
stopping; a second sweep is interrupted with Ctrl-C (SIGINT) from a separate driver process and then resumed; a
third has one trial that raises and one whose workers are SIGKILLed, and every W&B run must still read back whole.
The learning rates form a grid whose last value (1e-7) is hopeless: that trial only starts once another trial
has already passed ASHA's rung, so the rung always has a better score to compare it with.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from phi3v_ray.config import ExperimentConfig, load_experiment
from phi3v_ray.train.faults import PlantedFailure
from phi3v_ray.tune.results import FINISHED, STOPPED_EARLY, read_results_csv
from phi3v_ray.tune.sweep import SweepOutcome, run_sweep, sweep_directory

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def _overrides(catalog: Path, storage: Path, name: str) -> list[str]:
    return [
        f"data.catalog_dir={catalog}",
        f"data.prepared_dir={catalog / 'prepared'}",
        "data.max_train_examples=8",
        "data.max_eval_examples=4",
        "run.max_steps=4",
        "run.eval_every=2",
        "optim.micro_batch=2",
        "run.checkpoint_every=2",
        "run.val_generate_samples=0",
        "run.max_failures=0",
        f"run.storage_path={storage}",
        "scaling.cpus_per_worker=0.25",
        "tune.trial_driver_cpus=0.5",
        f"tune.name={name}",
        "wandb.mode=offline",
    ]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from phi3v_ray.data.split import split_catalog
    from phi3v_ray.data.synth import synth_catalog

    directory = tmp_path_factory.mktemp("tune-catalog")
    synth_catalog(directory, 100, seed=1, overwrite=True)
    split_catalog(directory)
    return directory


@pytest.fixture(scope="module")
def asha_sweep(
    ray_local, catalog: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ExperimentConfig, SweepOutcome]:
    storage = tmp_path_factory.mktemp("tune-runs")
    space = (
        "{finetune.rank: {choice: [4, 8, 16]}, optim.lr: {grid: [5.0e-3, 3.0e-3, 1.0e-3, 1.0e-7]},"
        " finetune.alpha: {ratio_of: finetune.rank, value: 2}}"
    )
    config = load_experiment(
        REPO / "experiments" / "demo.yaml",
        [
            *_overrides(catalog, storage, "asha"),
            f"tune.search_space={space}",
            "tune.num_samples=1",
            "tune.scheduler=asha",
            "tune.grace_period=1",
            "tune.reduction_factor=2",
            "tune.max_concurrent_trials=2",  # 2 x 1.0 CPU of 4 leaves room for Ray Data read tasks
        ],
    )
    return config, run_sweep(config)


def _local_sweep_dir(config: ExperimentConfig) -> Path:
    """The sweep's folder on this disk (these sweeps run on a local run.storage_path)."""
    location = sweep_directory(config)
    assert not location.is_remote
    return Path(location.path)


def _complete_runs(directory: Path, run_ids: set[str]) -> dict[str, Any]:
    """run id → the run read back from its offline files; fails unless every run's latest attempt has its exit."""
    from support.wandb_files import read_run

    return {run_id: read_run(directory, run_id, timeout_s=30) for run_id in run_ids}


def _steps(run: Any, key: str) -> list[int]:
    return [row["_step"] for row in run.history if key in row]


def _reported_steps(sweep_dir: Path, trial_id: str) -> list[int]:
    """Steps the trial reported to Tune (its result.json), i.e. what the scheduler saw before deciding."""
    (result_file,) = [path for path in sweep_dir.glob(f"run_trial_*{trial_id}*/result.json")]
    lines = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
    return [int(line["step"]) for line in lines if "step" in line and not line.get("trial_finished")]


def test_four_trial_sweep_logs_four_wandb_runs_in_one_group_with_distinct_rank_lr_pairs(asha_sweep) -> None:
    config, outcome = asha_sweep
    trial_ids = {row.trial_id for row in outcome.rows}
    assert len(trial_ids) == 4
    runs = _complete_runs(_local_sweep_dir(config) / "wandb", trial_ids | {outcome.summary_run_id})
    trial_runs = [runs[trial_id] for trial_id in trial_ids]
    assert {run.group for run in trial_runs} == {"asha"}
    pairs = {(run.config["finetune"]["rank"], run.config["optim"]["lr"]) for run in trial_runs}
    assert len(pairs) == 4
    for run in trial_runs:  # the derived key is in each run's config too
        assert run.config["finetune"]["alpha"] == 2 * run.config["finetune"]["rank"]
    summary = runs[outcome.summary_run_id]
    assert (summary.group, summary.job_type) == ("asha", "sweep-summary")


def test_every_trial_run_reads_back_whole_with_history_to_its_last_reported_step(asha_sweep) -> None:
    config, outcome = asha_sweep
    sweep_dir = _local_sweep_dir(config)
    runs = _complete_runs(sweep_dir / "wandb", {row.trial_id for row in outcome.rows})
    stopped = [row for row in outcome.rows if row.status == STOPPED_EARLY]
    assert stopped
    for row in outcome.rows:
        run = runs[row.trial_id]
        assert run.exit_code == 0, row
        last_reported = max(_reported_steps(sweep_dir, row.trial_id))
        assert max(_steps(run, "train/loss")) >= last_reported, row
        assert last_reported in _steps(run, "val/loss"), row  # every report follows a validation here
    for row in stopped:  # killed before it ended by itself, the driver sealed it and said how it ended
        assert runs[row.trial_id].summary.get("trial/end_state", STOPPED_EARLY) == STOPPED_EARLY


def test_results_csv_lists_every_trial_with_a_best_checkpoint_that_loads(asha_sweep) -> None:
    from phi3v_ray.checkpoint import load_trained_model, read_meta

    config, outcome = asha_sweep
    table = read_results_csv(outcome.results_csv)
    assert len(table) == 4
    assert list(table.columns[:4]) == ["trial_id", "finetune.rank", "optim.lr", "finetune.alpha"]
    assert table["best_val_loss"].notna().all()
    for row in table.to_dict("records"):
        checkpoint = Path(row["best_checkpoint"])
        assert checkpoint.is_dir() and checkpoint.is_relative_to(_local_sweep_dir(config))
        meta = read_meta(checkpoint)
        assert meta.experiment["finetune"]["rank"] == row["finetune.rank"]
        assert meta.experiment["optim"]["lr"] == pytest.approx(row["optim.lr"])
        model = load_trained_model(checkpoint)
        ranks = {p.shape[0] for n, p in model.named_parameters() if "lora_A" in n}
        assert ranks == {meta.experiment["finetune"]["rank"]}
    assert "best_val_loss" in outcome.table and str(outcome.results_csv).endswith("sweep_results.csv")


def test_asha_stops_the_hopeless_trial_early_and_its_status_says_so(asha_sweep) -> None:
    _, outcome = asha_sweep
    by_status = {
        status: [r for r in outcome.rows if r.status == status] for status in (FINISHED, STOPPED_EARLY)
    }
    assert len(by_status[STOPPED_EARLY]) >= 1
    assert len(by_status[FINISHED]) + len(by_status[STOPPED_EARLY]) == 4
    hopeless = next(r for r in outcome.rows if r.hyperparameters["optim.lr"] == pytest.approx(1e-7))
    assert hopeless.status == STOPPED_EARLY and "stopped by the scheduler" in hopeless.reason
    assert hopeless.validations < max(r.validations for r in by_status[FINISHED])


def _kill_train_workers_once_a_checkpoint_exists(
    sweep_dir: Path, killed: list[Any], stop: threading.Event
) -> None:
    """SIGKILL every live Ray Train worker once some trial has saved checkpoint_000002 (one trial runs at a time)."""
    from ray.util.state import list_actors

    try:
        while not stop.is_set():
            if any(sweep_dir.glob("*/checkpoint_000002")):
                workers = list_actors(
                    filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]
                )
                for worker in workers:
                    os.kill(worker.pid, signal.SIGKILL)
                    killed.append(worker.pid)
                if killed:
                    return
            time.sleep(0.2)
    except Exception as error:  # noqa: BLE001 - reported by the test's assertion instead of dying silently
        killed.append(error)


def test_failed_and_killed_trials_leave_complete_wandb_runs(ray_local, catalog: Path, tmp_path: Path) -> None:
    from phi3v_ray.tune.results import FAILED

    config = load_experiment(
        REPO / "experiments" / "demo.yaml",
        [
            *_overrides(catalog, tmp_path / "runs", "ends"),
            "run.max_steps=40",  # the killed trial is still training when its checkpoint at step 2 appears
            "tune.search_space={finetune.rank: {grid: [4, 8]}}",  # rank 4 raises at once (planted below), 8 never
            "tune.num_samples=1",
            "tune.scheduler=fifo",
            "tune.max_concurrent_trials=1",
        ],
    )
    sweep_dir = _local_sweep_dir(config)
    killed: list[int] = []
    stop = threading.Event()
    killer = threading.Thread(
        target=_kill_train_workers_once_a_checkpoint_exists, args=(sweep_dir, killed, stop), daemon=True
    )
    killer.start()
    try:
        outcome = run_sweep(config, planted_failure=PlantedFailure(step=1, when={"finetune.rank": 4}))
    finally:
        stop.set()
        killer.join(timeout=30)
    assert killed and all(isinstance(pid, int) for pid in killed), (killed, outcome.table)
    assert [row.status for row in outcome.rows] == [FAILED, FAILED], outcome.table
    runs = _complete_runs(sweep_dir / "wandb", {row.trial_id for row in outcome.rows})
    by_rank = {row.hyperparameters["finetune.rank"]: runs[row.trial_id] for row in outcome.rows}
    raised, killed_run = by_rank[4], by_rank[8]
    for run in (raised, killed_run):
        assert run.exit_code == 1 and run.group == "ends"
        assert run.config["optim"]["lr"] == config.optim.lr
    assert _steps(raised, "train/loss") == [1]  # the step it raised at was logged before the exception
    assert raised.config["finetune"]["rank"] == 4
    killed_id = next(row.trial_id for row in outcome.rows if row.hyperparameters["finetune.rank"] == 8)
    # Every checkpoint is a report to Ray; the history reaches at least the last one (the kill came after it).
    saved_steps = [int(path.name.split("_")[-1]) for path in _checkpoint_dirs(sweep_dir / killed_id)]
    assert max(_steps(killed_run, "train/loss")) >= max(saved_steps) >= 2
    assert killed_run.summary["trial/end_state"] == FAILED


def _checkpoint_dirs(trial_dir: Path) -> list[Path]:
    """Only `checkpoint_NNNNNN/` folders: Ray also keeps `checkpoint_manager_snapshot.json`-style files there."""
    return sorted(p for p in trial_dir.glob("checkpoint_*") if p.is_dir() and p.name.split("_")[-1].isdigit())


def _finished_trials(sweep_dir: Path) -> int:
    count = 0
    for result_file in sweep_dir.glob("run_trial_*/result.json"):
        lines = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        count += any(line.get("trial_finished") for line in lines)
    return count


def _started_trials(sweep_dir: Path) -> int:
    """Trials whose Train run has started (each writes a storage marker into <sweep>/<trial id>/ first)."""
    if not sweep_dir.is_dir():
        return 0
    return sum(
        (child / ".validate_storage_marker").exists() for child in sweep_dir.iterdir() if child.is_dir()
    )


def test_interrupted_sweep_resumes_only_the_missing_trials(ray_local, catalog: Path, tmp_path: Path) -> None:
    overrides = [
        *_overrides(catalog, tmp_path / "runs", "resume"),
        "tune.search_space={finetune.rank: {choice: [4, 8]}, optim.lr: {grid: [5.0e-3, 1.0e-3]}}",
        "tune.num_samples=1",
        "tune.scheduler=fifo",
        "tune.max_concurrent_trials=1",
    ]
    experiment = REPO / "experiments" / "demo.yaml"
    config = load_experiment(experiment, overrides)
    sweep_dir = _local_sweep_dir(config)
    command = [sys.executable, "-m", "phi3v_ray.cli", "tune", str(experiment)]
    for override in overrides:
        command += ["--set", override]
    env = {**os.environ, "RAY_ADDRESS": ray_local.get_runtime_context().gcs_address}
    log = tmp_path / "driver.log"
    with log.open("w") as sink:  # a file, not a pipe: Tune's progress output would fill a pipe and block it
        driver = subprocess.Popen(command, env=env, stdout=sink, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 900
    while (
        (_finished_trials(sweep_dir) < 1 or _started_trials(sweep_dir) < 2)
        and driver.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(2)
    ready = _finished_trials(sweep_dir) >= 1 and _started_trials(sweep_dir) >= 2
    if not ready:  # say what never happened instead of interrupting a sweep in the wrong state
        driver.kill()
        driver.wait(timeout=60)
        pytest.fail(
            f"the sweep never had 1 finished and 2 started trials (driver exit {driver.returncode}, finished "
            f"{_finished_trials(sweep_dir)}, started {_started_trials(sweep_dir)}):\n{log.read_text()[-3000:]}"
        )
    driver.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves its state and stops the running trial
    driver.wait(timeout=300)
    assert driver.returncode == 130, log.read_text()[-3000:]
    first = read_results_csv(sweep_dir / "sweep_results.csv")
    done_before = set(first.loc[first["status"] == FINISHED, "trial_id"])
    assert len(done_before) == 1 and "interrupted" in set(first["status"])
    checkpoints_before = {t: [p.name for p in _checkpoint_dirs(sweep_dir / t)] for t in done_before}
    runs_before = {t: len(list((sweep_dir / "wandb").rglob(f"offline-run-*-{t}"))) for t in done_before}

    outcome = run_sweep(config, resume=True)

    assert outcome.resumed
    assert len(outcome.rows) == 2 and {r.status for r in outcome.rows} == {FINISHED}
    table = read_results_csv(outcome.results_csv)
    assert set(table["trial_id"]) >= done_before and len(table) == 2
    for trial_id in done_before:  # not rerun: no new checkpoint, no second W&B run folder
        assert [p.name for p in _checkpoint_dirs(sweep_dir / trial_id)] == checkpoints_before[trial_id]
        assert len(list((sweep_dir / "wandb").rglob(f"offline-run-*-{trial_id}"))) == runs_before[trial_id]
    assert pd.Series([r.best_checkpoint for r in outcome.rows]).map(lambda p: Path(p).is_dir()).all()
