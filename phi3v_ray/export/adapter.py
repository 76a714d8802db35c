"""Read a PEFT LoRA adapter directory into what a merge needs: per base module (A, B, scale), plus whole tensors
saved through `modules_to_save` (the projector, a fully trained vision tower).

Only the adapter shapes our training writes are accepted (plain LoRA on Linear layers); anything peft can express but
a plain `W + scale * B @ A` merge would get wrong (DoRA, per-module rank/alpha patterns, LoRA biases, fan-in-fan-out
weights) is refused with the file and key that say so, instead of being merged silently wrong.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from phi3v_ray.checkpoint import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE
from phi3v_ray.errors import CheckpointError

PEFT_PREFIX = "base_model.model."
LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"


@dataclass
class LoraAdapter:
    """A LoRA adapter as merge inputs; keys are the base model's own tensor names (no peft prefixes)."""

    source: Path
    # base weight name (e.g. model.layers.0.self_attn.qkv_proj.weight) -> (lora_A, lora_B)
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    scale: float = 1.0
    # base tensor name -> trained replacement (modules_to_save)
    replacements: dict[str, torch.Tensor] = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    def expected_names(self) -> set[str]:
        """Every base tensor name this adapter changes: each must exist in the base, or it trained on another."""
        return set(self.pairs) | set(self.replacements)


def _read_config(path: Path) -> dict:
    """adapter_config.json, refusing the peft options a plain merge does not reproduce."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: unreadable adapter config ({error})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    if config.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{path}: peft_type is {config.get('peft_type')!r}; expected 'LORA'")
    refused = {
        "use_dora": "DoRA weights",
        "fan_in_fan_out": "fan-in-fan-out (Conv1D) weights",
        "rank_pattern": "per-module ranks",
        "alpha_pattern": "per-module alphas",
        "lora_bias": "LoRA biases",
    }
    for key, what in refused.items():
        if config.get(key):
            raise CheckpointError(f"{path}: {key} is set ({what}); expected a plain LoRA adapter to merge")
    for key in ("r", "lora_alpha"):
        if not isinstance(config.get(key), (int, float)) or config[key] <= 0:
            raise CheckpointError(f"{path}: {key} is {config.get(key)!r}; expected a positive number")
    return config


def read_adapter(adapter_dir: Path) -> LoraAdapter:
    """The adapter in `adapter_dir` (adapter_config.json + adapter_model.safetensors), kept in float32."""
    config = _read_config(adapter_dir / ADAPTER_CONFIG_FILE)
    weights_path = adapter_dir / ADAPTER_WEIGHTS_FILE
    try:
        tensors = load_file(str(weights_path))
    except Exception as error:  # safetensors raises its own types for truncated or corrupt files
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({error})") from None
    return adapter_from_tensors(tensors, config, adapter_dir)


def adapter_from_tensors(tensors: dict[str, torch.Tensor], config: dict, source: Path) -> LoraAdapter:
    """Sort peft's saved tensors (names as in adapter_model.safetensors) into LoRA pairs and replacements."""
    rank, alpha = config["r"], config["lora_alpha"]
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    adapter = LoraAdapter(source=source, scale=scale, config=config)
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        name = key.removeprefix(PEFT_PREFIX)
        for marker, half in ((LORA_A, "A"), (LORA_B, "B")):
            if name.endswith(marker):
                halves.setdefault(name.removesuffix(marker) + ".weight", {})[half] = tensor.float()
                break
        else:
            if "lora_" in name or ".modules_to_save." in name:
                raise CheckpointError(f"{source}: tensor {key} is not a LoRA A/B weight or a saved module")
            adapter.replacements[name] = tensor.float()
    for weight_name, pair in sorted(halves.items()):
        if set(pair) != {"A", "B"}:
            raise CheckpointError(f"{source}: {weight_name} has lora_{''.join(pair)} without its partner")
        lora_a, lora_b = pair["A"], pair["B"]
        if lora_a.shape[0] != rank or lora_b.shape[1] != rank:
            raise CheckpointError(
                f"{source}: {weight_name} LoRA rank is {lora_a.shape[0]}; expected r={rank} from "
                f"{ADAPTER_CONFIG_FILE}"
            )
        adapter.pairs[weight_name] = (lora_a, lora_b)
    return adapter
