"""Checkpoints for the export tests and benchmarks/export.py, built without a training run (test scaffolding).

`make_rich_lora_checkpoint` covers everything a LoRA checkpoint can train (language LoRA, vision-tower LoRA, the
projector through modules_to_save) with every trainable tensor set to random non-zero values, so a merge that skips
any part changes the logits. Its meta.json carries the base fingerprint, experiment settings and a trial name the
way phi3v_ray.train.saving writes them. `official_vision_config` is the tiny language model with the official CLIP
ViT-L/14-336 tower, for checks that need real official vision tensors without the 4.2B language model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from phi3v_ray.checkpoint import ADAPTER_DIR, MODEL_DIR, CheckpointMeta, write_meta
from phi3v_ray.config import FinetuneSection, ModelSection
from phi3v_ray.model.configuration import Phi3VConfig

LORA_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]


def experiment_settings(catalog_dir: str = "data/sample", **finetune: Any) -> dict[str, Any]:
    """The parts of ExperimentConfig.to_plain() a model card reads."""
    return {
        "model": {"preset": "tiny"},
        "finetune": {"mode": "lora", "rank": 4, "alpha": 8.0, "vision": "lora", **finetune},
        "optim": {"lr": 5e-3, "micro_batch": 2},
        "run": {"epochs": 1, "seed": 0, "storage_path": "/home/someone/runs"},
        "data": {"catalog_dir": catalog_dir},
        "wandb": {"api_key": "sk-never-in-a-card"},
    }


def perturb_trainable(model: torch.nn.Module, seed: int, scale: float = 0.05) -> None:
    """Give every trainable tensor random values (LoRA B starts at zero, which would make a merge a no-op)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn(param.shape, generator=generator) * scale)


def make_rich_lora_checkpoint(
    directory: Path,
    *,
    base: ModelSection | None = None,
    seed: int = 0,
    metrics: dict[str, float] | None = None,
    experiment: dict[str, Any] | None = None,
) -> Path:
    """A LoRA checkpoint with language LoRA, vision LoRA and a trained projector on `base` (default: tiny)."""
    from phi3v_ray.checkpoint import load_base_model
    from phi3v_ray.train.saving import base_fingerprint
    from phi3v_ray.train.trainable import apply_training_mode

    base = base or ModelSection(preset="tiny", num_crops=4)
    model, _ = load_base_model(base)
    fingerprint = base_fingerprint(model)
    finetune = FinetuneSection(rank=4, alpha=8, dropout=0.0, target_modules=LORA_TARGETS, vision="lora")
    peft_model = apply_training_mode(model, finetune)
    perturb_trainable(peft_model, seed)
    directory.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(str(directory / ADAPTER_DIR), safe_serialization=True)
    meta = CheckpointMeta(
        mode="lora",
        base_model=base,
        step=7,
        metrics=metrics or {},
        trial=directory.parent.name,
        base_fingerprint=fingerprint,
        experiment=experiment or experiment_settings(),
    )
    write_meta(directory, meta)
    return directory


def make_full_checkpoint(directory: Path, *, seed: int = 0) -> Path:
    """A full fine-tune of the tiny model: every weight perturbed, saved consolidated (float32) under model/."""
    from phi3v_ray.model.loading import load_model, save_pretrained

    model, _ = load_model("tiny")
    for param in model.parameters():
        param.requires_grad_(True)
    perturb_trainable(model, seed, scale=0.02)
    save_pretrained(model, directory / MODEL_DIR)
    meta = CheckpointMeta(
        mode="full",
        base_model=ModelSection(preset="tiny", num_crops=4),
        step=3,
        experiment=experiment_settings(mode="full"),
    )
    write_meta(directory, meta)
    return directory


def official_vision_config() -> Phi3VConfig:
    """The tiny language model fed by the official CLIP ViT-L/14-336 vision tower (303M parameters)."""
    from transformers import CLIPVisionConfig, Phi3Config

    from phi3v_ray.model.configuration import _tiny_text_kwargs, clip_large_336_kwargs

    return Phi3VConfig(
        text_config=Phi3Config(**_tiny_text_kwargs()),
        vision_config=CLIPVisionConfig(**clip_large_336_kwargs()),
        num_crops=4,
        image_token_id=8,
    )


def save_official_vision_base(directory: Path, *, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Build the official-vision model and save it (official layout, `dtype`) as a base model directory, with the
    tiny tokenizer's files beside it."""
    from phi3v_ray.model.loading import build_model, save_pretrained
    from phi3v_ray.model.tokenizer import load_tokenizer

    model = build_model(official_vision_config()).to(dtype)
    save_pretrained(model, directory, max_shard_size="200MB")
    load_tokenizer(None).save_pretrained(str(directory))
    return directory
