"""End to end on a real local Ray cluster: 2 CPU workers, real DeepSpeed (gloo), tiny model, W&B offline.

Three TorchTrainer runs, shared by the tests below (each run costs start-up time):
- ZeRO-2 LoRA run with a planted failure at step 6 (after the step-4 checkpoint), retried by Ray;
- the same run uninterrupted under ZeRO-3 (the reference step count, and the gathered-adapter path);
- a 1-step full fine-tune under ZeRO-3 (consolidated 16-bit model).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train_support import demo_config, tiny_datasets

from phi3v_ray import checkpoint as ckpt
from phi3v_ray.logged_history import REPLAYED_KEY
from phi3v_ray.train import saving
from phi3v_ray.train.faults import PlantedFailure
from phi3v_ray.train.launcher import build_trainer

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# 8 train rows / (2 workers x micro-batch 2) = 2 optimizer steps per epoch; 6 epochs = 12 steps.
EPOCHS, STEPS = 6, 12
COMMON = (
    f"run.epochs={EPOCHS}",
    "run.max_steps=null",
    "run.eval_every=4",
    "run.checkpoint_every=4",
    "run.keep_best=2",
    "run.val_generate_samples=2",
    "evaluate.max_new_tokens=8",
    "data.length_grouping=false",
    "optim.micro_batch=2",
)


def _fit(config, planted_failure=None):
    result = build_trainer(config, tiny_datasets(n_train=8, n_val=4), planted_failure=planted_failure).fit()
    assert result.error is None, result.error
    return result


@pytest.fixture(scope="module")
def zero2_run(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zero2")
    config = demo_config(tmp, *COMMON, "deepspeed.zero_stage=2", "run.max_failures=1", "run.name=zero2")
    return config, _fit(config, PlantedFailure(step=6)), tmp


@pytest.fixture(scope="module")
def zero3_run(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("zero3")
    config = demo_config(tmp, *COMMON, "deepspeed.zero_stage=3", "run.name=zero3")
    return config, _fit(config), tmp


def _first_loss(tmp: Path, run_id: str) -> float:
    from phi3v_ray.tracking import find_offline_runs

    from support.wandb_files import read_complete_offline_run

    first = read_complete_offline_run(find_offline_runs(tmp / "wandb", run_id)[0])
    return next(row["train/loss"] for row in first.history if row.get("trainer/step") == 1)


@pytest.mark.parametrize("run_fixture", ["zero2_run", "zero3_run"])
def test_training_loss_falls_with_a_clear_margin(run_fixture, request):
    config, result, tmp = request.getfixturevalue(run_fixture)
    first = _first_loss(tmp, config.run.name)
    final = result.metrics["loss"]
    assert final < 0.9 * first, (first, final)
    assert result.metrics["val_loss"] < 0.93 * first


def test_planted_failure_is_retried_from_the_last_checkpoint_and_finishes_with_the_same_step_count(
    zero2_run, zero3_run
):
    from phi3v_ray.tracking import find_offline_runs

    from support.wandb_files import read_complete_offline_run

    config, result, tmp = zero2_run
    attempts = [read_complete_offline_run(path) for path in find_offline_runs(tmp / "wandb", "zero2")]
    assert len(attempts) == 2, "expected one W&B folder per attempt (failed + retried)"
    assert attempts[0].exit_code == 1 and attempts[1].exit_code == 0
    first = {row["trainer/step"]: row for row in attempts[0].history if "train/loss" in row}
    trained = [row for row in attempts[1].history if "train/loss" in row and REPLAYED_KEY not in row]
    assert max(first) == 6  # failed at the planted step
    assert (
        min(row["trainer/step"] for row in trained) == 5
    )  # resumed after the step-4 checkpoint, not from scratch
    # The retry first re-sent, from the checkpoint, every row logged up to it (in case the dead attempt's W&B
    # writer never wrote them): the same values, marked as replayed, before any new step.
    replayed = [row for row in attempts[1].history if REPLAYED_KEY in row]
    assert [row["trainer/step"] for row in replayed] == [1, 2, 3, 4]
    for row in replayed:
        step = row["trainer/step"]
        assert row["train/loss"] == pytest.approx(first[step]["train/loss"], rel=1e-9), step
        assert row["train/lr"] == pytest.approx(first[step]["train/lr"], rel=1e-9), step
    assert replayed[-1]["val/loss"] == pytest.approx(first[4]["val/loss"], rel=1e-9)
    assert attempts[1].history.index(replayed[-1]) < attempts[1].history.index(trained[0])
    uninterrupted = zero3_run[1].metrics
    assert result.metrics["step"] == uninterrupted["step"] == STEPS
    # AdamW's own counter only reaches STEPS if the optimizer state came back with the checkpoint.
    assert result.metrics["adam_step"] == uninterrupted["adam_step"] == STEPS
    # The LR schedule resumed too: both runs end on the same schedule value.
    assert result.metrics["lr"] == pytest.approx(uninterrupted["lr"], abs=1e-12)


def test_checkpoint_layout_and_best_k_retention(zero2_run):
    config, result, tmp = zero2_run
    run_dir = tmp / "runs" / "zero2"
    kept = sorted(path for path in run_dir.glob("checkpoint_0*") if path.is_dir())
    assert len(kept) == config.run.keep_best
    scores = {path.name: json.loads((path / "meta.json").read_text())["metrics"]["val_loss"] for path in kept}
    best_path, best_metrics = (
        result.best_checkpoints[0]
        if len(result.best_checkpoints) == 1
        else min(result.best_checkpoints, key=lambda item: item[1]["val_loss"])
    )
    assert Path(best_path.path).name == min(scores, key=scores.get)
    for path in kept:
        assert (path / "adapter" / "adapter_model.safetensors").is_file()
        assert not list((path / "adapter").glob("*.bin")), "adapters must be safetensors only"
        assert (path / "engine" / saving.ENGINE_TAG).is_dir()
        meta = ckpt.read_meta(path)
        assert meta.mode == "lora" and meta.experiment["optim"]["lr"] == config.optim.lr


def test_lora_weights_change_and_base_weights_do_not(zero2_run):
    from phi3v_ray.model.loading import load_model

    _, result, _ = zero2_run
    directory = Path(result.checkpoint.path)
    adapter = load_file(str(directory / "adapter" / "adapter_model.safetensors"))
    lora_b = [tensor for name, tensor in adapter.items() if "lora_B" in name]
    assert lora_b and all(tensor.abs().max() > 0 for tensor in lora_b)  # lora_B starts at zero
    base, _ = load_model("tiny")
    projector = {name: tensor for name, tensor in adapter.items() if "img_projection" in name}
    assert projector, "the projector trains through modules_to_save"
    fresh = dict(base.named_parameters())
    for name, tensor in projector.items():
        base_name = name.removeprefix("base_model.model.").replace(".modules_to_save.default", "")
        assert not torch.equal(tensor, fresh[base_name].detach()), name
    # The frozen base the workers trained against is byte-identical to a freshly built tiny base.
    assert ckpt.read_meta(directory).base_fingerprint == saving.base_fingerprint(base)


@pytest.mark.parametrize("run_fixture", ["zero2_run", "zero3_run"])
def test_checkpoint_reloads_through_base_plus_adapter_with_identical_logits(run_fixture, request):
    _, result, _ = request.getfixturevalue(run_fixture)
    directory = Path(result.checkpoint.path)
    model = ckpt.load_trained_model(directory)
    assert ckpt.probe_matches(model, directory, atol=1e-5) <= 1e-5


def test_wandb_offline_files_hold_run_config_and_per_step_loss(zero3_run):
    from phi3v_ray.tracking import find_offline_runs

    from support.wandb_files import read_complete_offline_run

    config, _, tmp = zero3_run
    (folder,) = find_offline_runs(tmp / "wandb", "zero3")
    run = read_complete_offline_run(folder)
    for section in ("model", "finetune", "optim", "deepspeed", "scaling", "run"):
        assert run.config[section] == config.to_plain()[section]
    losses = {row["trainer/step"]: row["train/loss"] for row in run.history if "train/loss" in row}
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert any("val/predictions/_type" in row for row in run.history)  # the generated-vs-true table


def test_full_finetune_zero3_saves_a_consolidated_16bit_safetensors_model(ray_local, tmp_path):
    from phi3v_ray.model.modeling import Phi3VForCausalLM

    config = demo_config(
        tmp_path,
        "finetune.mode=full",
        "deepspeed.zero_stage=3",
        "run.max_steps=1",
        "run.val_generate_samples=0",
        "run.name=full",
        "optim.lr=1e-3",
    )
    result = _fit(config)
    model_dir = Path(result.checkpoint.path) / ckpt.MODEL_DIR
    assert list(model_dir.glob("*.safetensors")) and not list(model_dir.glob("*.bin"))
    assert not (Path(result.checkpoint.path) / ckpt.ADAPTER_DIR).exists()
    model = Phi3VForCausalLM.from_pretrained(str(model_dir))
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model = model.float()
    # Reloaded weights reproduce the training engine's logits up to bf16 rounding.
    assert ckpt.probe_matches(model, result.checkpoint.path, atol=0.1) < 0.1


def test_a_checkpoint_whose_report_was_lost_is_resumed_from_and_a_broken_newer_one_is_not(
    zero3_run, tmp_path
):
    """Ray Train restarts from the checkpoints its controller registered; a node lost between a worker's report and
    the controller's poll loses the registration but not the files. Here Ray knows none of the run's checkpoints
    (its snapshot is gone), the newest folder lost a rank's upload halfway, and the one before is whole."""
    import shutil

    from phi3v_ray.tracking import find_offline_runs
    from phi3v_ray.train.resume import PARTS_DIR

    from support.wandb_files import read_complete_offline_run

    config, uninterrupted, tmp = zero3_run
    run_dir = tmp_path / "runs" / "zero3"
    shutil.copytree(tmp / "runs" / "zero3", run_dir)
    (run_dir / "checkpoint_manager_snapshot.json").unlink()
    newest, *older = sorted((p for p in run_dir.glob("checkpoint_0*") if p.is_dir()), reverse=True)
    rank1 = json.loads((newest / PARTS_DIR / "rank-1-of-2.json").read_text())["files"]
    biggest = max(rank1, key=rank1.get)
    (newest / biggest).write_bytes((newest / biggest).read_bytes()[: rank1[biggest] // 2])
    resume_step = int(older[0].name.split("_")[1])
    assert 0 < resume_step < STEPS

    result = _fit(demo_config(tmp_path, *COMMON, "deepspeed.zero_stage=3", "run.name=zero3"))
    (attempt,) = [read_complete_offline_run(p) for p in find_offline_runs(tmp_path / "wandb", "zero3")]
    steps = [
        row["trainer/step"] for row in attempt.history if "train/loss" in row and REPLAYED_KEY not in row
    ]
    assert steps == list(range(resume_step + 1, STEPS + 1)), "resumed from the whole checkpoint, not from 0"
    # This W&B folder is new (as on a node that never saw the first run): the history up to the checkpoint came
    # with the checkpoint, so the run still shows every step.
    replayed = [row["trainer/step"] for row in attempt.history if REPLAYED_KEY in row]
    assert replayed == list(range(1, resume_step + 1))
    assert result.metrics["step"] == result.metrics["adam_step"] == STEPS
    assert result.metrics["lr"] == pytest.approx(uninterrupted.metrics["lr"], abs=1e-12)


def test_a_worker_group_that_never_finds_room_fails_in_bounded_time_naming_what_it_waited_for(
    ray_local, tmp_path, monkeypatch
):
    """What a run sees when a lost node's capacity never comes back: Ray Train's bounded placement retries end in
    an error that the launcher and the sweep turn into one line naming the run, the workers and the settings."""
    import time

    from phi3v_ray.train.placement import CapacityError, fit_within_capacity, is_placement_timeout
    from phi3v_ray.tune.results import _error_reason

    monkeypatch.setenv("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "3")
    config = demo_config(
        tmp_path,
        "scaling.num_workers=3",
        "scaling.cpus_per_worker=4",  # 12 CPUs: more than the shared 8-CPU test cluster will ever have
        "run.controller_failure_limit=1",
        "run.max_steps=2",
        "run.name=no-room",
    )
    started = time.monotonic()
    with pytest.raises(CapacityError) as caught:
        fit_within_capacity(build_trainer(config, tiny_datasets(n_train=8, n_val=4)), config, "no-room")
    assert time.monotonic() - started < 120, "the wait for room was not bounded"
    assert is_placement_timeout(caught.value.__cause__), repr(
        caught.value.__cause__
    )  # Ray's own error under it
    assert not is_placement_timeout(RuntimeError("CUDA out of memory"))
    message = str(caught.value)
    assert "run no-room" in message and "3 training workers of 4 CPU each" in message
    assert "2 attempt(s) of 3 s" in message and "run.controller_failure_limit=1" in message
    assert _error_reason(caught.value) == f"CapacityError: {message}"[:600]  # the sweep's reason column
