"""Decide what trains: LoRA adapters on the language model, the vision tower frozen / LoRA / full, the projector.

The projector (and a fully trained vision tower) go through peft's `modules_to_save`, so the adapter directory alone
carries every trained weight and evaluation needs only base + adapter. The module names it targets are the model's
own (phi3v_ray.model.module_names), shared with evaluation.
"""

from __future__ import annotations

import torch

from phi3v_ray.config import VISION_LORA_TARGETS, FinetuneSection
from phi3v_ray.model.module_names import PROJECTOR_LAYERS, VISION_TOWER


def _module_regex(language_targets: list[str], vision_targets: list[str]) -> str:
    """One regex for peft: language targets inside decoder layers, vision targets inside the CLIP tower only."""
    parts = [rf"model\.layers\.\d+\..*\.({'|'.join(language_targets)})"]
    if vision_targets:
        parts.append(rf".*\.{VISION_TOWER}\..*\.({'|'.join(vision_targets)})")
    return "^(" + "|".join(parts) + ")$"


def apply_training_mode(model: torch.nn.Module, finetune: FinetuneSection) -> torch.nn.Module:
    """Return the model to train: a PeftModel in LoRA mode (base frozen), or the model itself for full fine-tuning."""
    if finetune.mode == "full":
        for param in model.parameters():
            param.requires_grad_(True)
        return model

    from peft import LoraConfig, get_peft_model

    vision_targets = list(VISION_LORA_TARGETS) if finetune.vision == "lora" else []
    modules_to_save = []
    if finetune.projector_trainable:
        modules_to_save.extend(PROJECTOR_LAYERS)
    if finetune.vision == "full":
        modules_to_save.append(VISION_TOWER)
    peft_config = LoraConfig(
        r=finetune.rank,
        lora_alpha=finetune.alpha,
        lora_dropout=finetune.dropout,
        target_modules=_module_regex(finetune.target_modules, vision_targets),
        modules_to_save=modules_to_save or None,
        bias="none",
    )
    return get_peft_model(model, peft_config)


def trainable_summary(model: torch.nn.Module) -> dict[str, int]:
    """Trainable vs total parameter counts, for the run log and the memory estimate cross-check."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": trainable, "total_params": total}
