"""Losing a worker node mid-preprocessing and mid-evaluation: the work finishes on the nodes that remain, once each.

One real cluster for the module (tests/support/ray_cluster.py): a head with no CPUs, like cluster.yaml's, so the
drivers stay on it and every actor lands on a worker node, plus three worker nodes of their own. Each test runs a
real `phi3v-ray` command as a driver process against it, waits until the command's actors are busy on a worker node
(the dashboard's state API), and kills that node the way a reclaimed spot instance goes: SIGKILL to exactly the
processes its `ray start` created. Each test takes one node, so the module needs four (the sweep test may take a
second one if both trials packed onto the node it kills: Ray places them where they fit).

What must hold afterwards is what a user relies on: the command succeeds, and every input row is accounted for
exactly once (prepared + rejected = input; every contestant scored on every product, no pair twice). The retry
policy that makes it so is ACTOR_RETRY_POLICY in phi3v_ray/data/actor_retries.py (preprocessing and scoring pools);
with restarts off (max_restarts=0) both commands fail here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from phi3v_ray.cluster import DRIVER_RESOURCE

from support.ray_cluster import TwoNodeCluster, WorkerNode, kill_node, multi_node_cluster

BUSY_TIMEOUT_S = 480  # driver start + data reads + actor start; minutes when the 2 cores are shared
RUN_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def cluster() -> Iterator[TwoNodeCluster]:
    """Head (0 CPUs, cluster.yaml's trial-driver resource) + four worker nodes of 2 CPUs: one node to lose per
    test, the rest to recover on."""
    yield from multi_node_cluster(workers=4, worker_cpus=2, head_resources={DRIVER_RESOURCE: 8})


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    """A split sample catalog: enough train rows that preprocessing is still running when a node goes."""
    from phi3v_ray.data.split import split_catalog
    from phi3v_ray.data.synth import synth_catalog

    directory = tmp_path_factory.mktemp("node-loss") / "catalog"
    synth_catalog(directory, 160, seed=5, broken_url_share=0.0)
    split_catalog(directory, ratios=(0.8, 0.1, 0.1))
    return directory


def _start_cli(
    cluster: TwoNodeCluster, log: Path, *cli: str, wandb_mode: str = "disabled"
) -> subprocess.Popen:
    """`phi3v-ray <cli>` as a driver of `cluster` (it attaches to the head's raylet, which is never killed)."""
    env = {**cluster.env, "RAY_ADDRESS": cluster.gcs_address, "WANDB_MODE": wandb_mode}
    return subprocess.Popen(
        [sys.executable, "-m", "phi3v_ray.cli", *cli],
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )


def _kill_busy_node(cluster: TwoNodeCluster, driver: subprocess.Popen, udf: str, log: Path) -> WorkerNode:
    """Once a task of the `udf` actor pool is RUNNING on a worker node, kill that node (while the driver still runs)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while time.monotonic() < deadline:
        assert driver.poll() is None, f"finished before any node was lost:\n{log.read_text()[-4000:]}"
        try:
            running = cluster.state("tasks", state="RUNNING")
        except OSError:
            running = []
        for task in running:
            node = cluster.worker_on(task.get("node_id") or "")
            name = task.get("name", "")
            busy = udf in name and "__init__" not in name  # processing a batch, not still starting up
            if busy and node is not None and node.process.poll() is None:
                kill_node(node)
                assert driver.poll() is None, "the driver finished while the node was being killed"
                return node
        time.sleep(0.5)
    raise AssertionError(
        f"no {udf} task ran on a worker node in {BUSY_TIMEOUT_S}s:\n{log.read_text()[-4000:]}"
    )


def _finish(driver: subprocess.Popen, log: Path) -> str:
    try:
        driver.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        driver.kill()
        raise AssertionError(
            f"still running {RUN_TIMEOUT_S}s after the kill:\n{log.read_text()[-4000:]}"
        ) from None
    output = log.read_text()
    assert driver.returncode == 0, f"exit {driver.returncode} after a node was lost:\n{output[-5000:]}"
    return output


def _pool_actors_hit(cluster: TwoNodeCluster, udf: str, lost_node_id: str) -> int:
    """Actors of the `udf` pool that the kill took: recreated ones (their record moved to another node) plus those
    whose record still names the lost node (the pool finished without recreating them). Proof the kill hit the
    pool, not just a bystander node."""
    actors = [a for a in cluster.state("actors") if udf in (a.get("repr_name") or a.get("class_name") or "")]
    restarted = sum(int(a.get("num_restarts") or 0) for a in actors)
    return restarted + sum(a.get("node_id") == lost_node_id for a in actors)


def test_preprocessing_survives_losing_a_node_and_every_row_is_accounted_once(
    cluster: TwoNodeCluster, catalog: Path, tmp_path: Path
) -> None:
    prepared_dir = tmp_path / "prepared"
    log = tmp_path / "prepare.log"
    driver = _start_cli(
        cluster,
        log,
        "data", "prepare", "--catalog", str(catalog), "--splits", "train",
        "--set", f"data.prepared_dir={prepared_dir}", "--set", "model.num_crops=4", "--set", "data.preprocess_cpus=1",
    )  # fmt: skip
    lost = _kill_busy_node(cluster, driver, "ExamplePreparer", log)
    output = _finish(driver, log)
    assert _pool_actors_hit(cluster, "ExamplePreparer", lost.node_id) >= 1, (
        "no preprocessing actor was on the lost node"
    )

    (entry,) = [meta.parent for meta in prepared_dir.glob("train-*/meta.json")]
    meta = json.loads((entry / "meta.json").read_text())
    examples = pd.read_parquet(entry / "examples", columns=["row_id"])
    rejects = pd.read_parquet(entry / "rejects.parquet")
    split_rows = len(pd.read_parquet(catalog / "splits.parquet").query("split == 'train'"))
    # input = prepared + rejected, from the files themselves (not only the summary the command printed).
    assert meta["input_rows"] == split_rows == len(examples) + len(rejects), output[-2000:]
    assert (meta["prepared"], meta["rejected"]) == (len(examples), len(rejects))
    assert not examples["row_id"].duplicated().any(), "a retried batch wrote its examples twice"
    assert not rejects["row_id"].duplicated().any(), "a retried batch logged its rejects twice"
    every_row = sorted([*examples["row_id"], *rejects["row_id"]])
    assert every_row == list(range(split_rows)), "rows missing after the node was lost"
    assert lost.process.poll() is not None


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Three untrained LoRA checkpoints of the tiny base (distinct seeds, so distinct contestants)."""
    from support.synthetic_checkpoints import make_lora_checkpoint

    root = tmp_path_factory.mktemp("node-loss-sweep") / "sweep"
    for seed in range(3):
        make_lora_checkpoint(root / f"trial_{seed}" / "checkpoint_000000", steps=0, seed=seed)
    return root


def test_evaluation_survives_losing_a_node_and_scores_every_pair_once(
    cluster: TwoNodeCluster, catalog: Path, sweep: Path, tmp_path: Path
) -> None:
    from phi3v_ray.data.split import load_split_rows

    output_dir = tmp_path / "evaluation"
    log = tmp_path / "evaluate.log"
    # 48 train products, preprocessed on the fly in blocks of 16: three blocks, so both actors get batches.
    driver = _start_cli(
        cluster,
        log,
        "evaluate", "--checkpoints", str(sweep), "--catalog", str(catalog), "--split", "train", "--batch-size", "4",
        "--output", str(output_dir), "--no-plots",
        "--set", "evaluate.num_actors=2", "--set", "evaluate.max_new_tokens=6", "--set", "data.max_train_examples=48",
        "--set", f"data.prepared_dir={tmp_path / 'prepared'}", "--set", "data.preprocess_cpus=1",
    )  # fmt: skip
    lost = _kill_busy_node(cluster, driver, "CheckpointPredictor", log)
    _finish(driver, log)
    assert _pool_actors_hit(cluster, "CheckpointPredictor", lost.node_id) >= 1, (
        "no evaluation actor was on the lost node"
    )

    contestants = {"base", "trivial", *(f"sweep/trial_{seed}/checkpoint_000000" for seed in range(3))}
    board = pd.read_csv(output_dir / "leaderboard.csv")
    assert set(board["checkpoint"]) == contestants
    products = load_split_rows(catalog, "train", 48)["product_code"]
    assert products.is_unique  # so (contestant, product) names one evaluation row
    predictions = pd.read_parquet(output_dir / "predictions.parquet")
    assert predictions["load_error"].isna().all()
    pairs = predictions[["checkpoint", "product_code"]]
    assert not pairs.duplicated().any(), "a retried batch was scored twice"
    expected = {(name, int(code)) for name in contestants for code in products}
    assert set(map(tuple, pairs.itertuples(index=False))) == expected
    assert len(pairs) == len(expected)


def test_rejects_of_a_retried_batch_are_counted_once(tmp_path: Path) -> None:
    """The idempotence the retry policy relies on, without a cluster: the same batch prepared twice (an attempt that
    died after writing its rejects, then the retry) leaves one rejects record per row."""
    import numpy as np

    from phi3v_ray.config import ExperimentConfig
    from phi3v_ray.data.examples import processor_settings
    from phi3v_ray.data.preprocess import ExamplePreparer
    from phi3v_ray.data.rejects import RejectsLog

    preparer = ExamplePreparer(
        processor_settings(ExperimentConfig()), prompt_only=True, rejects_dir=str(tmp_path / "rejects")
    )
    missing = str(tmp_path / "no-such-image.jpg")
    batch = {
        "row_id": np.array([3, 7]),
        "product_code": np.array([1, 2]),
        "title": np.array(["A", "B"], dtype=object),
        "category3_code": np.array(["X", "Y"], dtype=object),
        "full_price": np.array([10.0, 20.0]),
        "local_image_path": np.array([missing, missing], dtype=object),
        "status": np.array(["ok", "ok"], dtype=object),
    }
    for _attempt in range(2):
        assert list(preparer(batch)) == []
    rejects = RejectsLog(directory=tmp_path / "rejects", input_rows=2)
    assert len(os.listdir(tmp_path / "rejects")) == 1
    assert rejects.summary(0).reconciles and rejects.summary(0).rejected == 2


# ---- a sweep losing the node its trials train on ----------------------------------------------------------------

SWEEP_STEPS = 24
SWEEP_CHECKPOINT_EVERY = 4
SWEEP_LRS = (3.0e-3, 1.0e-3)


def _sweep_train_rows(wandb_dir: Path) -> dict[str, list[list[dict]]]:
    """run id -> each attempt's own training rows so far (files still being written are read as far as they go;
    rows a restart re-sent from its checkpoint are left out)."""
    from phi3v_ray.logged_history import REPLAYED_KEY
    from phi3v_ray.tracking import find_offline_runs

    from support.wandb_files import read_offline_run

    runs: dict[str, list[list[dict]]] = {}
    run_ids = (
        {path.stem.removeprefix("run-") for path in wandb_dir.rglob("run-*.wandb")}
        if wandb_dir.is_dir()
        else ()
    )
    for run_id in run_ids:
        for folder in find_offline_runs(wandb_dir, run_id):
            try:
                history = read_offline_run(folder).history
            except Exception:  # noqa: BLE001 - a record half-written this instant; the next poll reads it
                history = []
            trained = [row for row in history if "train/loss" in row and REPLAYED_KEY not in row]
            runs.setdefault(run_id, []).append(trained)
    return runs


def _reference_lrs(catalog: Path, lr: float) -> dict[int, float]:
    """step -> the learning rate an undisturbed trial with this peak lr logs after that step."""
    from test_train_support import demo_config

    from support.schedule_reference import undisturbed_lrs

    return undisturbed_lrs(demo_config(catalog.parent / "reference", f"optim.lr={lr}").optim, SWEEP_STEPS)


def test_a_sweep_survives_losing_a_training_node_and_every_trial_resumes_from_its_checkpoint(
    cluster: TwoNodeCluster, catalog: Path, tmp_path: Path
) -> None:
    """Two trials train; once one is past a checkpoint, the node running its workers is killed. Both trials finish
    with every step trained once in their merged W&B history, the hit one resumed from a checkpoint (not step 0),
    the schedule where an undisturbed run has it; trial drivers and Train controllers never left the head."""
    from support.wandb_files import read_run

    storage = tmp_path / "runs"
    space = "{optim.lr: {grid: [" + ", ".join(f"{lr:.1e}" for lr in SWEEP_LRS) + "]}}"
    settings = [
        f"data.catalog_dir={catalog}", f"data.prepared_dir={tmp_path / 'prepared'}", "model.num_crops=4",
        "data.max_train_examples=16", "data.max_eval_examples=4", "data.length_grouping=false",
        "data.preprocess_cpus=0.5", "optim.micro_batch=2", f"run.max_steps={SWEEP_STEPS}",
        f"run.eval_every={SWEEP_CHECKPOINT_EVERY}", f"run.checkpoint_every={SWEEP_CHECKPOINT_EVERY}",
        "run.keep_best=100", "run.val_generate_samples=0", "run.max_failures=2", f"run.storage_path={storage}",
        "scaling.num_workers=2", "scaling.cpus_per_worker=0.5", f"tune.search_space={space}", "tune.num_samples=1",
        "tune.scheduler=fifo", "tune.max_concurrent_trials=2", "tune.name=spot-sweep", "wandb.mode=offline",
    ]  # fmt: skip
    log = tmp_path / "tune.log"
    cli = ["tune", str(Path(__file__).parents[1] / "experiments" / "demo.yaml")] + [
        arg for setting in settings for arg in ("--set", setting)
    ]
    driver = _start_cli(cluster, log, *cli, wandb_mode="offline")
    wandb_dir = storage / "spot-sweep" / "wandb"

    deadline = time.monotonic() + BUSY_TIMEOUT_S
    hit: WorkerNode | None = None
    while hit is None:
        assert time.monotonic() < deadline, f"no trial got past a checkpoint:\n{log.read_text()[-4000:]}"
        assert driver.poll() is None, f"finished before any node was lost:\n{log.read_text()[-4000:]}"
        progressed = any(
            len(attempts[0]) >= SWEEP_CHECKPOINT_EVERY + 2
            for attempts in _sweep_train_rows(wandb_dir).values()
        )
        if progressed:
            workers = [
                a for a in cluster.state("actors", state="ALIVE") if "RayTrainWorker" in a["class_name"]
            ]
            hit = next(
                (cluster.worker_on(a["node_id"]) for a in workers if cluster.worker_on(a["node_id"])), None
            )
        time.sleep(0.5)
    kill_node(hit)
    output = _finish(driver, log)

    results = pd.read_csv(storage / "spot-sweep" / "sweep_results.csv")
    assert len(results) == 2 and set(results["status"]) == {"finished"}, results.to_string()
    rows = _sweep_train_rows(wandb_dir)
    assert set(rows) >= set(results["trial_id"]), "a trial has no W&B run"
    restarted = 0
    for trial_id, lr in zip(results["trial_id"], results["optim.lr"], strict=True):
        run = read_run(wandb_dir, trial_id, timeout_s=30)  # one id per trial; the latest attempt complete
        steps = [int(row["trainer/step"]) for row in run.history if "train/loss" in row]
        assert steps == list(range(1, SWEEP_STEPS + 1)), f"{trial_id}: steps missing or repeated in W&B"
        last = [row for row in run.history if "train/loss" in row][-1]
        assert last["train/adam_step"] == SWEEP_STEPS, f"{trial_id}: optimizer state did not come back"
        reference = _reference_lrs(catalog, float(lr))
        logged = {int(r["trainer/step"]): r["train/lr"] for r in run.history if "train/loss" in r}
        assert logged == pytest.approx(reference, rel=1e-6, abs=1e-12), f"{trial_id}: schedule not resumed"
        attempts = rows[trial_id]
        if len(attempts) > 1:
            restarted += 1
            first_new = attempts[-1][0]["trainer/step"]
            # resumed right after a checkpoint the trial reached, never from scratch
            assert first_new > 1 and (first_new - 1) % SWEEP_CHECKPOINT_EVERY == 0, (trial_id, first_new)
    assert restarted >= 1, f"no trial was restarted by the node loss:\n{output[-3000:]}"

    # Nothing leaked: every placement group the trials (and the lost node's) held is gone once the sweep ended.
    deadline = time.monotonic() + 60
    while (held := [pg for pg in cluster.state("placement_groups") if pg.get("state") != "REMOVED"]) and (
        time.monotonic() < deadline
    ):
        time.sleep(1)
    assert not held, f"placement groups left behind: {[(pg['name'], pg['state']) for pg in held]}"

    head = next(node["node_id"] for node in cluster.state("nodes") if node.get("is_head_node"))
    drivers = [
        a
        for a in cluster.state("actors")
        if a["class_name"] in ("TrainController",) or "ImplicitFunc" in a["class_name"]
    ]
    assert len(drivers) >= 4, [a["class_name"] for a in cluster.state("actors")]
    assert {a["node_id"] for a in drivers} == {head}, (
        "a trial driver or Train controller ran on a worker node"
    )
