"""Fold a LoRA adapter into base weights: W' = W + scale * B @ A in float32, then cast to the export dtype.

Works on a stream of (name, tensor) pairs, so the caller decides the memory shape (phi3v_ray.export.base_weights
reads one tensor at a time). Every adapter entry must land on a base tensor of the right shape; one that does not is
an error naming it, because an adapter trained on another base would otherwise be dropped in silence.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from phi3v_ray.errors import CheckpointError
from phi3v_ray.export.adapter import LoraAdapter


def merged_tensor(name: str, base: torch.Tensor, adapter: LoraAdapter) -> torch.Tensor:
    """One base tensor with the adapter applied, in float32 (a replacement wins over the base as trained)."""
    if name in adapter.replacements:
        merged = adapter.replacements[name]
        if tuple(merged.shape) != tuple(base.shape):
            raise CheckpointError(
                f"{adapter.source}: saved module {name} has shape {tuple(merged.shape)}, the base has "
                f"{tuple(base.shape)}; the adapter was trained on a different base model"
            )
        return merged
    if name in adapter.pairs:
        lora_a, lora_b = adapter.pairs[name]
        delta = lora_b @ lora_a
        if tuple(delta.shape) != tuple(base.shape):
            raise CheckpointError(
                f"{adapter.source}: LoRA for {name} has shape {tuple(delta.shape)}, the base has "
                f"{tuple(base.shape)}; the adapter was trained on a different base model"
            )
        return base.float() + adapter.scale * delta
    return base.float() if base.is_floating_point() else base


def merged_stream(
    tensors: Iterable[tuple[str, torch.Tensor]], adapter: LoraAdapter | None, dtype: torch.dtype
) -> Iterator[tuple[str, torch.Tensor]]:
    """The base tensors with the adapter merged (float32) and cast to `dtype`; None merges nothing (full models)."""
    unused = adapter.expected_names() if adapter is not None else set()
    for name, tensor in tensors:
        merged = merged_tensor(name, tensor, adapter) if adapter is not None else tensor
        unused.discard(name)
        yield name, merged.to(dtype) if merged.is_floating_point() else merged
    if unused:
        preview = ", ".join(sorted(unused)[:5])
        raise CheckpointError(
            f"{adapter.source}: {len(unused)} adapter weight(s) name no tensor of the base ({preview}); the "
            f"adapter was trained on a different base model"
        )
