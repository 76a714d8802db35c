"""Training components without Ray: DeepSpeed config, LR schedule, memory estimate, LoRA placement, W&B tracking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from phi3v_ray.config import config_from_dict
from phi3v_ray.train.deepspeed import build_deepspeed_config
from phi3v_ray.train.memory import ModelDims, count_parameters, estimate_memory, memory_table
from phi3v_ray.train.schedule import lr_multiplier, scheduler_factory

# ---- DeepSpeed config ----------------------------------------------------------------------------------------------


def test_zero2_config_carries_batch_geometry_clipping_and_optimizer():
    config = config_from_dict(
        {"optim": {"micro_batch": 3, "grad_accum": 4, "grad_clip": 0.5, "lr": 1e-4, "betas": [0.9, 0.95]}}
    )
    ds = build_deepspeed_config(config, world_size=2, on_gpu=False)
    assert ds["train_micro_batch_size_per_gpu"] == 3
    assert ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == 3 * 4 * 2
    assert ds["gradient_clipping"] == 0.5
    assert ds["zero_optimization"]["stage"] == 2
    assert ds["optimizer"]["params"]["lr"] == 1e-4 and ds["optimizer"]["params"]["torch_adam"] is True
    assert ds["bf16"]["enabled"] is False and ds["fp16"]["enabled"] is False


def test_offload_lives_under_zero_optimization_not_top_level():
    config = config_from_dict(
        {"deepspeed": {"zero_stage": 3, "offload_optimizer": True, "offload_param": True}}
    )
    ds = build_deepspeed_config(config, world_size=8, on_gpu=True)
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3
    assert zero["offload_optimizer"]["device"] == "cpu" and zero["offload_param"]["device"] == "cpu"
    assert "offload_optimizer" not in ds and "offload_param" not in ds
    assert zero["stage3_gather_16bit_weights_on_model_save"] is True
    assert ds["optimizer"]["params"]["torch_adam"] is False  # fused / CPU Adam on GPU machines


def test_bf16_follows_the_model_dtype():
    config = config_from_dict({"model": {"dtype": "bfloat16"}, "scaling": {"use_gpu": True}})
    assert build_deepspeed_config(config, world_size=1, on_gpu=True)["bf16"]["enabled"] is True


def test_param_offload_without_zero3_is_a_config_error():
    from phi3v_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="deepspeed: offload_param needs zero_stage: 3"):
        config_from_dict({"deepspeed": {"zero_stage": 2, "offload_param": True}}, source="x")


# ---- schedule ------------------------------------------------------------------------------------------------------


def test_schedule_warms_up_linearly_then_decays_to_zero():
    kwargs = {"total_steps": 100, "warmup_steps": 10}
    assert lr_multiplier(0, schedule="cosine", **kwargs) == pytest.approx(0.1)
    assert lr_multiplier(9, schedule="cosine", **kwargs) == pytest.approx(1.0)
    assert lr_multiplier(55, schedule="cosine", **kwargs) == pytest.approx(0.5)
    assert lr_multiplier(100, schedule="cosine", **kwargs) == pytest.approx(0.0)
    assert lr_multiplier(55, schedule="linear", **kwargs) == pytest.approx(0.5)
    assert lr_multiplier(90, schedule="constant", **kwargs) == 1.0


def test_scheduler_state_round_trips_so_resume_continues_the_schedule():
    optim = config_from_dict({"optim": {"lr": 1e-2, "warmup_ratio": 0.1}}).optim
    param = torch.nn.Parameter(torch.zeros(1))
    first = scheduler_factory(optim, 20)(torch.optim.SGD([param], lr=optim.lr))
    for _ in range(7):
        first.optimizer.step()
        first.step()
    second = scheduler_factory(optim, 20)(torch.optim.SGD([param], lr=optim.lr))
    second.load_state_dict(first.state_dict())
    assert second.get_last_lr() == pytest.approx(first.get_last_lr())
    assert second.last_epoch == 7


# ---- memory estimate -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("vision", ["frozen", "lora", "full"])
def test_parameter_counts_match_the_built_tiny_model(vision):
    from phi3v_ray.model.loading import load_model
    from phi3v_ray.train.trainable import apply_training_mode

    config = config_from_dict({"finetune": {"rank": 4, "vision": vision}})
    model, _ = load_model("tiny")
    base_total = sum(p.numel() for p in model.parameters())
    counts = count_parameters(ModelDims.for_preset("tiny"), config)
    assert counts.total == base_total
    peft_model = apply_training_mode(model, config.finetune)
    assert counts.trainable == sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def test_official_parameter_count_is_4_15_billion_like_the_meta_device_model():
    from phi3v_ray.model.configuration import Phi3VConfig
    from phi3v_ray.model.modeling import Phi3VForCausalLM

    with torch.device("meta"):
        model = Phi3VForCausalLM(Phi3VConfig.preset("official"))
    counts = count_parameters(ModelDims.for_preset("official"), config_from_dict({}))
    assert counts.total == sum(p.numel() for p in model.parameters()) == 4_146_621_440


def _official(**sections):
    base = {
        "model": {"preset": "official", "dtype": "bfloat16", "num_crops": 16},
        "scaling": {"use_gpu": True},
    }
    for key, value in sections.items():
        base.setdefault(key, {}).update(value)
    return config_from_dict(base)


def test_zero3_shards_weights_and_zero2_does_not():
    dims = ModelDims.for_preset("official")
    config2, config3 = _official(deepspeed={"zero_stage": 2}), _official(deepspeed={"zero_stage": 3})
    kwargs = {"seq_len": 2600, "checkpointing": True}
    w2_1 = estimate_memory(dims, config2, world_size=1, **kwargs).weights
    w2_8 = estimate_memory(dims, config2, world_size=8, **kwargs).weights
    w3_8 = estimate_memory(dims, config3, world_size=8, **kwargs).weights
    assert w2_1 == w2_8 == 2 * 4_146_621_440
    assert w3_8 < w2_8 / 3


def test_gradient_checkpointing_cuts_activations_and_full_finetune_costs_optimizer_state():
    dims = ModelDims.for_preset("official")
    lora, full = _official(), _official(finetune={"mode": "full"}, deepspeed={"zero_stage": 3})
    plain = estimate_memory(dims, lora, world_size=4, seq_len=2600, checkpointing=False)
    ckpt = estimate_memory(dims, lora, world_size=4, seq_len=2600, checkpointing=True)
    assert ckpt.activations < plain.activations / 4
    full_estimate = estimate_memory(dims, full, world_size=4, seq_len=2600, checkpointing=True)
    assert full_estimate.optimizer == pytest.approx(12 * 4_146_621_440 / 4, rel=1e-6)
    assert full_estimate.optimizer > 50 * ckpt.optimizer  # 4.15B vs 47M trainable parameters
    offloaded = estimate_memory(
        dims,
        _official(deepspeed={"zero_stage": 3, "offload_optimizer": True}),
        world_size=4,
        seq_len=2600,
        checkpointing=True,
    )
    assert offloaded.optimizer == 0 and offloaded.cpu_offloaded > 0


def test_memory_table_names_every_category_and_card():
    table = memory_table(ModelDims.for_preset("official"), _official(), world_size=4, seq_len=2600)
    for word in (
        "weights",
        "gradients",
        "optimizer state",
        "activations",
        "A10G-24GB",
        "A100-80GB",
        "H100-80GB",
    ):
        assert word in table


def test_dry_run_prints_config_placement_steps_and_memory(tmp_path):
    """The `train --dry-run` plan on a split catalog: steps per epoch from the train rows; starts no Ray."""
    import pandas as pd
    import ray

    from phi3v_ray.config import load_experiment
    from phi3v_ray.train.dry_run import dry_run_report

    pd.DataFrame({"split": ["train"] * 40 + ["val"] * 5, "title": ["x"] * 45}).to_parquet(
        tmp_path / "catalog.parquet"
    )
    config = load_experiment("experiments/demo.yaml", [f"data.catalog_dir={tmp_path}", "optim.micro_batch=2"])
    was_running = ray.is_initialized()
    out = dry_run_report(config, cpus=2, gpus=0)
    assert "# resolved config" in out and "zero_stage: 2" in out
    assert "2 Ray Train workers x {'CPU': 0.25}" in out
    assert "40 training products / 4 samples per optimizer step" in out and "= 10 steps per epoch" in out
    assert "an upper bound" in out  # counted before preprocessing: rejects are not subtracted
    assert "activations" in out and "A100-80GB" in out
    assert ray.is_initialized() == was_running


def test_dry_run_counts_the_prepared_examples_when_the_cache_has_them(tmp_path, monkeypatch):
    """With a prepared train entry for this config, the plan uses its example count (rejects excluded)."""
    from phi3v_ray.config import load_experiment
    from phi3v_ray.train import dry_run

    config = load_experiment("experiments/demo.yaml", [f"data.catalog_dir={tmp_path}", "optim.micro_batch=2"])
    monkeypatch.setattr(dry_run, "prepared_train_rows", lambda _config: 36)
    rows = dry_run.train_rows(config)
    assert rows is not None and rows.exact and rows.count == 36
    text = "\n".join(dry_run.steps_text(config, rows))
    assert "36 training products / 4 samples per optimizer step" in text and "= 9 steps per epoch" in text
    assert "upper bound" not in text


# ---- W&B tracking --------------------------------------------------------------------------------------------------


def test_auto_mode_is_offline_without_an_api_key(monkeypatch):
    from phi3v_ray.config import WandbSection
    from phi3v_ray.tracking import resolve_mode

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert resolve_mode(WandbSection()) == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "k" * 40)
    assert resolve_mode(WandbSection()) == "online"


def test_only_rank_zero_starts_a_run(tmp_path):
    from phi3v_ray.config import WandbSection
    from phi3v_ray.tracking import start_tracking

    tracker = start_tracking(
        WandbSection(mode="offline"),
        {},
        rank=1,
        run_id="r",
        run_name="r",
        group=None,
        directory=str(tmp_path),
    )
    assert not tracker.active
    tracker.log({"train/loss": 1.0}, step=1)  # a no-op, never an error
    assert not any(tmp_path.iterdir())


def test_run_config_carrying_the_api_key_is_refused(tmp_path, monkeypatch):
    from phi3v_ray.config import WandbSection
    from phi3v_ray.errors import ConfigError
    from phi3v_ray.tracking import start_tracking

    secret = "s3cr3t" * 7
    monkeypatch.setenv("WANDB_API_KEY", secret)
    with pytest.raises(ConfigError, match="API key"):
        start_tracking(
            WandbSection(mode="offline"),
            {"run": {"name": secret}},
            rank=0,
            run_id="r",
            run_name="r",
            group=None,
            directory=str(tmp_path),
        )


def test_offline_run_reads_back_config_history_and_prediction_table(tmp_path, monkeypatch):
    from phi3v_ray.config import WandbSection
    from phi3v_ray.tracking import find_offline_runs, start_tracking

    from support.wandb_files import read_complete_offline_run

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    tracker = start_tracking(
        WandbSection(),
        {"optim": {"lr": 0.5}},
        rank=0,
        run_id="unit-run",
        run_name="unit",
        group="g",
        directory=str(tmp_path),
    )
    for step in (1, 2, 3):
        tracker.log({"train/loss": 1.0 / step, "trainer/step": step}, step=step)
    canvas = np.zeros((3, 56, 112), dtype=np.uint8)
    tracker.log_predictions(
        [
            {
                "product_code": 7,
                "pixel_values": canvas,
                "image_size": [56, 100],
                "generated": "a",
                "expected": "b",
            }
        ],
        step=3,
    )
    tracker.finish()
    (folder,) = find_offline_runs(tmp_path, "unit-run")
    run = read_complete_offline_run(folder)
    assert run.complete and run.exit_code == 0
    assert run.config["optim"] == {"lr": 0.5}
    assert [row["train/loss"] for row in run.history if "train/loss" in row] == pytest.approx(
        [1.0, 0.5, 1 / 3]
    )
    table_rows = [row for row in run.history if row.get("val/predictions/_type") == "table-file"]
    assert table_rows and table_rows[0]["val/predictions/nrows"] == 1
