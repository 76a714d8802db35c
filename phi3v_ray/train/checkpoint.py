"""Checkpoint directory I/O (layout in docs/interfaces.md): adapter/ or model/, engine/, meta.json.

Every rank calls `save_checkpoint` (DeepSpeed's engine save and ZeRO-3 gathers are collective); only rank 0 writes
the adapter, the consolidated model and meta.json. Adapters and models are safetensors; engine/ is DeepSpeed's own
resume format and is only ever read back by `restore_engine` in a training run.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from phi3v_ray.config import ExperimentConfig
from phi3v_ray.errors import CheckpointError

FORMAT = "phi3v-ray-checkpoint/1"
ENGINE_DIR, ADAPTER_DIR, MODEL_DIR, META_FILE = "engine", "adapter", "model", "meta.json"
ENGINE_TAG = "state"
PROBE_FILE = "probe.safetensors"
PROBE_POSITIONS = 16  # logits kept per probe: enough to catch a wrong base or adapter, small for a 32k vocab


def _trainable_parameters(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [param for param in module.parameters() if param.requires_grad]


def _save_adapter(engine: Any, directory: Path, *, rank: int, zero_stage: int) -> None:
    """PEFT adapter (+ modules_to_save) as safetensors; under ZeRO-3 the trainable shards are gathered first."""
    import deepspeed

    peft_model = engine.module
    target = directory / ADAPTER_DIR
    if zero_stage == 3:
        # Collective: every rank gathers, rank 0 reads the full tensors while they are materialised.
        with deepspeed.zero.GatheredParameters(_trainable_parameters(peft_model), modifier_rank=None):
            if rank == 0:
                peft_model.save_pretrained(str(target), safe_serialization=True)
    elif rank == 0:
        peft_model.save_pretrained(str(target), safe_serialization=True)


def _save_full_model(engine: Any, directory: Path, *, rank: int, zero_stage: int) -> None:
    """Full fine-tune: one consolidated 16-bit safetensors model in the official layout (config.json + weights)."""
    # Under ZeRO-3 this is collective and only rank 0 receives the full dict.
    state = engine._zero3_consolidated_16bit_state_dict() if zero_stage == 3 else engine.module.state_dict()
    if rank != 0:
        return
    half = {name: tensor.detach().to(torch.bfloat16).contiguous() for name, tensor in state.items()}
    engine.module.save_pretrained(str(directory / MODEL_DIR), state_dict=half)


def _base_name(name: str) -> str:
    """A parameter's name in the plain base model (peft adds `base_model.model.` and `.base_layer`)."""
    return name.removeprefix("base_model.model.").replace(".base_layer.", ".")


def _fingerprinted(name: str) -> bool:
    """The sample of base weights the fingerprint covers: first decoder layer, output head, CLIP patch embedding."""
    base = _base_name(name)
    return ".layers.0." in base or base.startswith("lm_head.") or base.endswith("patch_embedding.weight")


def base_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over a fixed sample of frozen base tensors: proves an adapter is applied to the base it trained on."""
    digest = hashlib.sha256()
    # Base tensors only: works on the plain base model and on the PEFT-wrapped one (adapters excluded by name).
    named = sorted(
        (_base_name(name), param)
        for name, param in model.named_parameters()
        if _fingerprinted(name) and "lora_" not in name and "modules_to_save" not in name
    )
    for name, param in named:
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _engine_base_fingerprint(engine: Any, *, zero_stage: int) -> str:
    """The fingerprint computed on the engine's module; under ZeRO-3 the sampled tensors are gathered (collective)."""
    if zero_stage != 3:
        return base_fingerprint(engine.module)
    import deepspeed

    sampled = [
        param
        for name, param in engine.module.named_parameters()
        if not param.requires_grad and _fingerprinted(name)
    ]
    with deepspeed.zero.GatheredParameters(sampled, modifier_rank=None):
        return base_fingerprint(engine.module)


def save_checkpoint(
    engine: Any,
    directory: str | Path,
    *,
    config: ExperimentConfig,
    state: dict[str, int],
    metrics: dict[str, float],
    trial: str | None,
    rank: int,
    probe: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write one checkpoint into `directory` (this rank's part of it); call on every rank at the same step."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    stage = config.deepspeed.zero_stage
    if config.lora.mode == "lora":
        _save_adapter(engine, directory, rank=rank, zero_stage=stage)
    else:
        _save_full_model(engine, directory, rank=rank, zero_stage=stage)
    # Frozen base weights are rebuilt from the base model on resume; saving them again would copy 4B params per step.
    engine.save_checkpoint(
        str(directory / ENGINE_DIR),
        tag=ENGINE_TAG,
        client_state=dict(state),
        exclude_frozen_parameters=config.lora.mode == "lora",
    )
    fingerprint = _engine_base_fingerprint(engine, zero_stage=stage) if config.lora.mode == "lora" else None
    if rank == 0:
        if probe is not None:
            from safetensors.torch import save_file

            save_file({key: value.contiguous() for key, value in probe.items()}, str(directory / PROBE_FILE))
        meta = {
            "format": FORMAT,
            "mode": config.lora.mode,
            "base_model": config.model.model_dump(mode="json"),
            "experiment": config.to_plain(),
            "step": state["step"],
            "epoch": state["epoch"],
            "metrics": {key: float(value) for key, value in metrics.items()},
            "trial": trial,
            "base_fingerprint": fingerprint,
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=2))
    return directory


def read_meta(directory: str | Path) -> dict[str, Any]:
    """meta.json of a checkpoint, checked for our format tag."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {META_FILE} (not a phi3v-ray checkpoint)")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def restore_engine(engine: Any, directory: str | Path, *, lora: bool) -> tuple[int, int, int]:
    """Load optimizer, LR schedule and trainable weights from engine/; returns (step, epoch, epoch_step)."""
    engine_dir = Path(directory) / ENGINE_DIR
    if not engine_dir.is_dir():
        raise CheckpointError(f"{directory}: no {ENGINE_DIR}/ to resume from")
    # LoRA checkpoints exclude frozen base weights, so the module load must accept their absence.
    _, client_state = engine.load_checkpoint(str(engine_dir), tag=ENGINE_TAG, load_module_strict=not lora)
    if client_state is None:
        raise CheckpointError(f"{engine_dir}: DeepSpeed could not load the engine state")
    return int(client_state["step"]), int(client_state["epoch"]), int(client_state.get("epoch_step", 0))


def load_trained_model(directory: str | Path, *, dtype: str = "float32") -> torch.nn.Module:
    """Base model + adapter (or the consolidated model) from a checkpoint, the way evaluation loads it."""
    from phi3v_ray.config import ModelSection
    from phi3v_ray.model.loading import load_model

    meta = read_meta(directory)
    directory = Path(directory)
    if meta["mode"] == "full":
        model, _ = load_model(str(directory / MODEL_DIR), dtype=dtype)
        return model
    base = ModelSection.model_validate(meta["base_model"])
    model, _ = load_model(base.path or base.preset, dtype=dtype, attention=base.attention)
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(directory / ADAPTER_DIR))


def probe_matches(model: torch.nn.Module, directory: str | Path, *, atol: float = 1e-5) -> float:
    """Max |logit difference| between `model` now and the training engine at save time on the stored probe.

    Raises CheckpointError when it exceeds `atol` (wrong base, adapter not applied, dtype drift).
    """
    from safetensors.torch import load_file

    path = Path(directory) / PROBE_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {PROBE_FILE} to verify against")
    probe = load_file(str(path))
    expected = probe.pop("logits")
    model.eval()
    with torch.no_grad():
        logits = model(**probe).logits[:, -expected.shape[1] :].float()
    difference = float((logits - expected).abs().max())
    if difference > atol:
        raise CheckpointError(
            f"{directory}: reloaded logits differ from save time by {difference:.3g} (> {atol})"
        )
    return difference
