"""The training side of a checkpoint: save from a DeepSpeed engine, restore an engine, fingerprint the base.

The directory layout and meta.json are phi3v_ray.checkpoint's contract; this module only fills it. Every rank calls
`save_checkpoint` (DeepSpeed's engine save and ZeRO-3 gathers are collective); only rank 0 writes the adapter, the
consolidated model, the probe and meta.json. Adapters and models are safetensors; engine/ is DeepSpeed's own resume
format and is only ever read back by `restore_engine` in a training run.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from phi3v_ray.checkpoint import (
    ADAPTER_DIR,
    ENGINE_DIR,
    MODEL_DIR,
    PROBE_FILE,
    CheckpointMeta,
    storage_relative_base,
    write_meta,
)
from phi3v_ray.config import ExperimentConfig
from phi3v_ray.errors import CheckpointError

ENGINE_TAG = "state"
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
    if config.finetune.mode == "lora":
        _save_adapter(engine, directory, rank=rank, zero_stage=stage)
    else:
        _save_full_model(engine, directory, rank=rank, zero_stage=stage)
    # Frozen base weights are rebuilt from the base model on resume; saving them again would copy 4B params per step.
    engine.save_checkpoint(
        str(directory / ENGINE_DIR),
        tag=ENGINE_TAG,
        client_state=dict(state),
        exclude_frozen_parameters=config.finetune.mode == "lora",
    )
    fingerprint = (
        _engine_base_fingerprint(engine, zero_stage=stage) if config.finetune.mode == "lora" else None
    )
    if rank == 0:
        if probe is not None:
            from safetensors.torch import save_file

            save_file({key: value.contiguous() for key, value in probe.items()}, str(directory / PROBE_FILE))
        meta = CheckpointMeta(
            mode=config.finetune.mode,
            base_model=config.model,
            experiment=config.to_plain(),
            step=state["step"],
            epoch=state["epoch"],
            metrics={key: float(value) for key, value in metrics.items()},
            trial=trial,
            base_fingerprint=fingerprint,
            base_path_in_storage=storage_relative_base(config.model, config.run.storage_path),
        )
        write_meta(directory, meta)
    return directory


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
