"""Runs, sweeps and checkpoints in a bucket: `run.storage_path: s3://...` keeps everything under that prefix.

The bucket is moto's standalone S3 server on loopback (`ThreadedMotoServer`, the emulator Ray's own S3 tests use),
reached through the same pyarrow client as AWS with only the endpoint overridden (tests/conftest.py); AWS is never
contacted. The regression this guards: the sweep once turned `s3://bucket/runs` into the relative local folder
`s3:/bucket/runs`, so every trial's checkpoints and W&B files landed on whichever node ran the trial.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from phi3v_ray.config import ExperimentConfig, load_experiment
from phi3v_ray.storage import download_tree, location
from phi3v_ray.tune.results import FINISHED, read_results_csv
from phi3v_ray.tune.sweep import SweepOutcome, run_sweep, sweep_directory

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


# ---- quick checks of the pieces (no Ray) -------------------------------------------------------------------------


def test_results_csv_is_written_whole_to_a_bucket_and_reads_back(bucket: str, tmp_path: Path) -> None:
    from phi3v_ray.tune.results import STOPPED_EARLY, TrialRow, write_results_csv

    rows = [
        TrialRow(
            "t1", {"optim.lr": 0.003}, FINISHED, "", 0.5, 4, 2, f"{bucket}/runs/sw/t1/checkpoint_000004"
        ),
        TrialRow(
            "t2",
            {"optim.lr": 1e-7},
            STOPPED_EARLY,
            "stopped by the scheduler after 1 validation(s)",
            0.9,
            2,
            1,
        ),
    ]
    remote = write_results_csv(rows, f"{bucket}/runs/sw/sweep_results.csv", ["optim.lr"], "val_loss")
    local = write_results_csv(rows, tmp_path / "sweep_results.csv", ["optim.lr"], "val_loss")
    assert remote.uri == f"{bucket}/runs/sw/sweep_results.csv"
    assert remote.read_bytes() == (tmp_path / "sweep_results.csv").read_bytes()
    assert read_results_csv(remote).equals(read_results_csv(local))


def test_checkpoints_train_reports_inside_the_bucket_become_uris_and_deleted_ones_are_skipped(
    bucket: str,
) -> None:
    import pandas as pd

    from phi3v_ray.tune.results import best_point

    storage = location(f"{bucket}/runs/sw")
    storage.join("t1", "checkpoint_000004", "meta.json").write_text("{}")
    key = storage.path  # what Ray Train reports: the path inside the filesystem, no scheme
    history = pd.DataFrame(
        {
            "val_loss": [0.4, 0.6],
            "val_step": [2, 4],
            "checkpoint_path": [f"{key}/t1/checkpoint_000002", f"{key}/t1/checkpoint_000004"],
        }
    )
    best = best_point(history, "val_loss", "min", storage)  # step 2's checkpoint was deleted (keep_best)
    assert best.checkpoint == f"{bucket}/runs/sw/t1/checkpoint_000004" and best.step == 2


def test_a_sweep_into_a_missing_bucket_fails_before_ray_starts(s3_server) -> None:
    from phi3v_ray.errors import StorageError

    config = load_experiment(
        REPO / "experiments" / "demo.yaml", ["run.storage_path=s3://no-such-bucket-phi3v-runs/runs"]
    )
    with pytest.raises(StorageError, match="'no-such-bucket-phi3v-runs' does not exist") as caught:
        run_sweep(config)
    assert str(caught.value).startswith("s3://no-such-bucket-phi3v-runs/runs/demo-sweep/")


def test_a_wandb_run_staged_for_a_uri_is_mirrored_and_found_again_from_another_disk(bucket: str) -> None:
    import shutil

    from phi3v_ray.config import WandbSection
    from phi3v_ray.tracking import TrainingRun, finish_run, open_run, seal_run
    from phi3v_ray.wandb_mirror import local_run_directory

    section = WandbSection(mode="offline")
    directory = f"{bucket}/runs/sw/wandb"
    run = open_run(section, {"x": 1}, directory=directory, group="sw", run_id="trial-a")
    run.log({"loss": 1.0}, step=1)
    run_dir = finish_run(run)
    assert run_dir is not None and not str(run_dir).startswith("s3:")
    stored = location(f"{directory}/wandb/{run_dir.name}/run-trial-a.wandb")
    assert stored.read_bytes() == (run_dir / "run-trial-a.wandb").read_bytes()

    shutil.rmtree(local_run_directory(directory))  # a sealer on a node that never held the run's files
    run_location = TrainingRun(run_id="trial-a", group="sw", directory=directory)
    assert not seal_run(
        section, run_location, {"x": 1}, end_state=FINISHED, exit_code=0
    )  # complete: left alone
    assert (local_run_directory(directory) / "wandb" / run_dir.name / "run-trial-a.wandb").is_file()


def test_a_checkpoint_uri_is_copied_without_its_engine_state(
    bucket: str, tmp_path: Path, monkeypatch
) -> None:
    from phi3v_ray.checkpoint import local_checkpoint

    monkeypatch.setenv("PHI3V_CHECKPOINT_CACHE", str(tmp_path / "cache"))
    stored = location(f"{bucket}/runs/sw/t1/checkpoint_000004")
    stored.join("meta.json").write_text("{}")
    stored.join("adapter", "adapter_model.safetensors").write_bytes(b"w")
    stored.join("engine", "state", "optim.pt").write_bytes(b"big")
    copy = local_checkpoint(stored.uri)
    assert copy.name == "checkpoint_000004" and copy.is_relative_to(tmp_path / "cache")
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()) == [
        "adapter/adapter_model.safetensors",
        "meta.json",
    ]
    from phi3v_ray.errors import CheckpointError

    with pytest.raises(CheckpointError, match="nothing stored there"):
        local_checkpoint(f"{bucket}/runs/sw/t9/checkpoint_000001")


# ---- a real sweep on the bucket ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from phi3v_ray.data.split import split_catalog
    from phi3v_ray.data.synth import synth_catalog

    directory = tmp_path_factory.mktemp("runs-storage-catalog")
    synth_catalog(directory, 60, seed=3, overwrite=True)
    split_catalog(directory)
    return directory


@pytest.fixture(scope="module")
def module_bucket(s3_server) -> str:
    """One bucket for the module's sweep (the function-scoped `bucket` fixture cannot feed a module fixture)."""
    import uuid

    import boto3

    name = f"runs-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="module")
def s3_sweep(ray_local, catalog: Path, module_bucket: str) -> tuple[ExperimentConfig, SweepOutcome]:
    """Two tiny FIFO trials (LoRA rank 4 and 8, 2 steps) with run.storage_path in the bucket."""
    config = load_experiment(
        REPO / "experiments" / "demo.yaml",
        [
            f"data.catalog_dir={catalog}",
            f"data.prepared_dir={catalog / 'prepared'}",
            "data.max_train_examples=4",
            "data.max_eval_examples=2",
            "run.max_steps=2",
            "run.eval_every=2",
            "run.checkpoint_every=2",
            "optim.micro_batch=2",
            "run.val_generate_samples=0",
            "run.max_failures=0",
            f"run.storage_path={module_bucket}/runs",
            "scaling.cpus_per_worker=0.25",
            "tune.trial_driver_cpus=0.5",
            "tune.name=s3sweep",
            "tune.search_space={finetune.rank: {grid: [4, 8]}}",
            "tune.num_samples=1",
            "tune.scheduler=fifo",
            "tune.max_concurrent_trials=2",
            "wandb.mode=offline",
        ],
    )
    return config, run_sweep(config)


def _session_dir() -> Path:
    import ray

    return Path(ray._private.worker._global_node.get_session_dir_path())


def test_sweep_on_a_bucket_keeps_results_and_checkpoints_under_the_prefix(
    s3_sweep, module_bucket: str
) -> None:
    config, outcome = s3_sweep
    prefix = f"{module_bucket}/runs/s3sweep"
    assert sweep_directory(config).uri == prefix and outcome.sweep_dir.is_remote
    assert [row.status for row in outcome.rows] == [FINISHED, FINISHED], outcome.table
    assert outcome.results_csv.uri == f"{prefix}/sweep_results.csv"
    table = read_results_csv(outcome.results_csv)
    assert len(table) == 2 and table["best_val_loss"].notna().all()
    for row in table.to_dict("records"):
        checkpoint = location(row["best_checkpoint"])
        assert checkpoint.uri.startswith(f"{prefix}/{row['trial_id']}/checkpoint_"), row
        assert checkpoint.join("meta.json").is_file() and checkpoint.join("engine").is_dir()
    names = {info.path.rsplit("/", 1)[-1] for info in outcome.sweep_dir.list()}
    assert any(name.startswith("experiment_state") for name in names), names  # Tune's own state is there too


def test_nothing_lands_in_a_local_folder_named_after_the_scheme(s3_sweep) -> None:
    # A URI read as a Path is a relative folder `s3:` below the cwd of whoever used it: this driver or a Ray worker.
    strays = [root / "s3:" for root in (Path.cwd(), REPO) if (root / "s3:").exists()]
    strays += list(_session_dir().rglob("s3:*"))
    assert not strays, strays


def test_every_trial_and_the_summary_have_whole_wandb_runs_in_the_bucket(s3_sweep, tmp_path: Path) -> None:
    from support.wandb_files import read_run

    config, outcome = s3_sweep
    copied = download_tree(sweep_directory(config).join("wandb"), tmp_path / "wandb")
    assert copied > 0
    runs: dict[str, Any] = {
        run_id: read_run(tmp_path / "wandb", run_id, timeout_s=5)
        for run_id in {row.trial_id for row in outcome.rows} | {outcome.summary_run_id}
    }
    for row in outcome.rows:
        assert runs[row.trial_id].exit_code == 0 and runs[row.trial_id].group == "s3sweep"
        assert runs[row.trial_id].config["finetune"]["rank"] == row.hyperparameters["finetune.rank"]
    assert runs[outcome.summary_run_id].job_type == "sweep-summary"


def test_the_best_checkpoint_loads_back_from_its_uri(s3_sweep) -> None:
    from phi3v_ray.checkpoint import load_trained_model, probe_matches, read_meta

    _, outcome = s3_sweep
    best = outcome.rows[0]
    assert best.best_checkpoint and best.best_checkpoint.startswith("s3://")
    meta = read_meta(best.best_checkpoint)
    assert meta.trial == best.trial_id
    model = load_trained_model(best.best_checkpoint)
    ranks = {p.shape[0] for n, p in model.named_parameters() if "lora_A" in n}
    assert ranks == {best.hyperparameters["finetune.rank"]}
    assert probe_matches(model, best.best_checkpoint) <= 1e-5


def test_evaluate_reads_a_sweep_from_the_bucket_and_writes_its_output_there(
    s3_sweep, ray_local, module_bucket: str
) -> None:
    from phi3v_ray.config import EvalSection
    from phi3v_ray.evaluation.scoring import evaluate
    from phi3v_ray.model.configuration import Phi3VConfig
    from phi3v_ray.model.processing import Phi3VProcessor
    from phi3v_ray.model.tokenizer import tiny_tokenizer

    from support.synthetic_checkpoints import prepared_rows

    config, outcome = s3_sweep
    processor = Phi3VProcessor.from_config(Phi3VConfig.preset("tiny"), tiny_tokenizer())
    dataset = ray_local.data.from_items(prepared_rows(processor, with_answer=False))
    settings = EvalSection(batch_size=4, max_new_tokens=8, cpus_per_actor=1.0)
    output = f"{module_bucket}/evaluation"
    sweep_uri = sweep_directory(config).uri

    first = evaluate(dataset, [sweep_uri], output, settings)

    trials = {row.trial_id for row in outcome.rows}
    scored = {name.split("/")[1] for name in first.scored_now if name.startswith("s3sweep/")}
    assert scored == trials and not first.broken, (first.scored_now, first.broken)
    for name in (
        "leaderboard.csv",
        "leaderboard.json",
        "leaderboard.md",
        "predictions.parquet",
        "broken.json",
    ):
        assert location(output).join(name).is_file(), name
    assert all(str(path).startswith(output + "/") for path in first.files.values()), first.files
    assert any(path.name.endswith(".png") for path in first.files.values())

    again = evaluate(dataset, [sweep_uri], output, settings)  # the cache came back from the bucket

    assert not again.scored_now and set(again.reused) == set(first.scored_now)
