"""The checkpoint contract without any weights: meta.json round trip, errors naming file and key, discovery."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from phi3v_ray.checkpoint import (
    ADAPTER_DIR,
    ADAPTER_FILES,
    META_FILE,
    CheckpointMeta,
    base_model_key,
    model_source,
    read_meta,
    write_meta,
)
from phi3v_ray.config import ModelSection
from phi3v_ray.errors import CheckpointError
from phi3v_ray.evaluation.discovery import discover_checkpoints, single_checkpoint


def _checkpoint(directory: Path, **meta_fields) -> Path:
    """A LoRA checkpoint directory with placeholder adapter files (discovery never opens them)."""
    (directory / ADAPTER_DIR).mkdir(parents=True)
    for name in ADAPTER_FILES:
        (directory / ADAPTER_DIR / name).write_text("{}")
    fields = {"mode": "lora", "base_model": ModelSection(num_crops=4), "step": 3} | meta_fields
    write_meta(directory, CheckpointMeta(**fields))
    return directory


def test_meta_round_trips_with_the_base_model_typed(tmp_path: Path) -> None:
    _checkpoint(tmp_path, trial="t0", metrics={"val_loss": 1.5})
    meta = read_meta(tmp_path)
    assert meta.format == "phi3v-ray-checkpoint/1" and meta.mode == "lora" and meta.step == 3
    assert meta.base_model.dtype == "float32" and meta.base_model.num_crops == 4
    assert meta.metrics == {"val_loss": 1.5} and meta.base_fingerprint is None
    assert meta.weights_dir_name == ADAPTER_DIR


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "phi3v-ray-checkpoint/0"}, "format 'phi3v-ray-checkpoint/0', expected"),
        ({"mode": "half"}, "mode: Input should be 'lora' or 'full'"),
        ({"base_model": {"preset": "tiny", "dtype": "float8"}}, "base_model.dtype:"),
        ({"base_model": {"preset": "tiny", "colour": "red"}}, "base_model.colour: unknown key"),
        ({"step": None}, "step:"),
        ({"extra": 1}, "extra: unknown key"),
    ],
)
def test_a_bad_meta_names_the_file_and_the_key(tmp_path: Path, change: dict, message: str) -> None:
    _checkpoint(tmp_path)
    path = tmp_path / META_FILE
    raw = json.loads(path.read_text()) | change
    path.write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=str(path)) as error:
        read_meta(tmp_path)
    assert message in str(error.value)


def test_missing_step_is_named(tmp_path: Path) -> None:
    _checkpoint(tmp_path)
    path = tmp_path / META_FILE
    raw = json.loads(path.read_text())
    del raw["step"]
    path.write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"meta\.json: step: missing"):
        read_meta(tmp_path)


def test_base_identity_uses_the_typed_defaults() -> None:
    assert model_source(ModelSection()) == "tiny"
    assert model_source(ModelSection(path="/models/phi3v")) == "/models/phi3v"
    assert base_model_key(ModelSection()) == base_model_key(ModelSection(attention="eager"))
    assert base_model_key(ModelSection()) != base_model_key(ModelSection(dtype="bfloat16"))
    with pytest.raises(CheckpointError, match="neither path nor preset"):
        model_source(ModelSection(preset=None))


def test_discovery_reports_each_broken_checkpoint_with_its_reason(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "sweep" / "good")
    bad_mode = _checkpoint(tmp_path / "sweep" / "bad_mode")
    raw = json.loads((bad_mode / META_FILE).read_text()) | {"mode": "half"}
    (bad_mode / META_FILE).write_text(json.dumps(raw))
    no_weights = _checkpoint(tmp_path / "sweep" / "no_weights", mode="full")
    good, broken = discover_checkpoints([tmp_path / "sweep"])
    assert [c.name for c in good] == ["sweep/good"]
    reasons = {b.name: b.reason for b in broken}
    assert "meta.json: mode:" in reasons["sweep/bad_mode"]
    assert reasons["sweep/no_weights"] == f"{no_weights / 'model'}: missing (meta.json says mode 'full')"
    assert good[0].weights_dir == tmp_path / "sweep" / "good" / ADAPTER_DIR


def test_single_checkpoint_refuses_a_broken_one_or_several(tmp_path: Path) -> None:
    one = _checkpoint(tmp_path / "sweep" / "a")
    assert single_checkpoint(one).path == one
    _checkpoint(tmp_path / "sweep" / "b")
    with pytest.raises(CheckpointError, match="holds 2 checkpoints"):
        single_checkpoint(tmp_path / "sweep")
    (one / ADAPTER_DIR / ADAPTER_FILES[1]).unlink()
    with pytest.raises(CheckpointError, match="missing adapter_model.safetensors"):
        single_checkpoint(one)


def test_evaluate_without_an_experiment_preprocesses_as_the_checkpoint_base(tmp_path: Path) -> None:
    from phi3v_ray.commands import evaluate

    checkpoint = _checkpoint(tmp_path / "ckpt", base_model=ModelSection(num_crops=4, dtype="bfloat16"))
    parser = argparse.ArgumentParser()
    evaluate.add_arguments(parser)
    args = parser.parse_args(
        ["--checkpoints", str(checkpoint), "--split", "val", "--set", "evaluate.batch_size=3"]
    )
    config = evaluate._build_config(args)
    assert (config.model.num_crops, config.model.dtype) == (4, "bfloat16")
    assert config.evaluate.checkpoints == [str(checkpoint)]
    assert (config.evaluate.split, config.evaluate.batch_size) == ("val", 3)
