"""The weights an export starts from, one tensor at a time: a base model for LoRA, the consolidated model of a full
fine-tune. Read tensor by tensor from the safetensors shards, so memory holds one tensor, not one model.

Also the guard that an adapter meets the base it was trained on: the base fingerprint recorded at save time
(phi3v_ray.train.saving.base_fingerprint: sha256 over a fixed sample of base tensors) recomputed from the files.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from phi3v_ray.errors import CheckpointError, ConfigError
from phi3v_ray.model.configuration import Phi3VConfig
from phi3v_ray.model.loading import (
    DROPPED_KEY_PATTERNS,
    PRESETS,
    build_model,
    resolve_model_dir,
    weight_files,
)
from phi3v_ray.model.official_config import load_config

FINGERPRINT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def dropped(name: str) -> bool:
    """Aliases and buffers the official layout does not store (the `wte` alias, CLIP position ids, rotary caches)."""
    return any(pattern.search(name) for pattern in DROPPED_KEY_PATTERNS)


@dataclass
class BaseWeights:
    """Named tensors of a model (from safetensors files, or an in-memory preset) plus its config."""

    config: Phi3VConfig
    model_dir: Path | None  # None for a preset (weights built in memory)
    _files: dict[str, Path]
    _memory: dict[str, torch.Tensor]

    @classmethod
    def open(cls, source: str, *, where: str) -> BaseWeights:
        """A preset name, a model directory or a hub id; `where` names the file that asked for it (in errors)."""
        if source in PRESETS:
            config = Phi3VConfig.preset(source)
            return cls(config, None, {}, dict(build_model(config).state_dict()))
        try:
            model_dir = resolve_model_dir(source)
            files = weight_files(model_dir)
            config = load_config(model_dir)
        except (CheckpointError, ConfigError) as error:
            raise CheckpointError(f"{where}: base model {source!r} is not available ({error})") from None
        located: dict[str, Path] = {}
        for path in files:
            with safe_open(str(path), framework="pt") as handle:
                located.update(dict.fromkeys(handle.keys(), path))  # noqa: SIM118 - handles are not iterable
        return cls(config, model_dir, located, {})

    def names(self) -> list[str]:
        """Tensor names the official layout stores, in file order."""
        order = self._memory if self._files == {} else self._files
        return [name for name in order if not dropped(name)]

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape without reading its data."""
        if name in self._memory:
            return tuple(self._memory[name].shape)
        with safe_open(str(self._files[name]), framework="pt") as handle:
            return tuple(handle.get_slice(name).get_shape())

    def get(self, name: str) -> torch.Tensor:
        """One tensor, read now."""
        if name in self._memory:
            return self._memory[name]
        with safe_open(str(self._files[name]), framework="pt") as handle:
            return handle.get_tensor(name)

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Every stored tensor, one at a time, in file order.

        Each tensor is read through its own short-lived handle: safetensors memory-maps the file, and a handle kept
        open across a 5 GB shard would keep every page read so far in this process's resident memory.
        """
        for name in self.names():
            yield name, self.get(name)

    def nbytes(self) -> int:
        """Size of the stored tensors in their stored dtypes."""
        total = 0
        for name in self.names():
            if name in self._memory:
                total += self._memory[name].numel() * self._memory[name].element_size()
            else:
                with safe_open(str(self._files[name]), framework="pt") as handle:
                    sliced = handle.get_slice(name)
                    numel = 1
                    for size in sliced.get_shape():
                        numel *= size
                    total += numel * _DTYPE_BYTES.get(sliced.get_dtype(), 4)
        return total


_DTYPE_BYTES = {"F32": 4, "BF16": 2, "F16": 2, "F64": 8, "I64": 8, "I32": 4, "U8": 1, "I8": 1, "BOOL": 1}


def fingerprinted(name: str) -> bool:
    """The sample the training side fingerprints: first decoder layer, output head, CLIP patch embedding."""
    return ".layers.0." in name or name.startswith("lm_head.") or name.endswith("patch_embedding.weight")


def fingerprints(weights: BaseWeights) -> set[str]:
    """The base fingerprint in each dtype training may have held the base in (the bytes differ per dtype)."""
    digests = {dtype: hashlib.sha256() for dtype in FINGERPRINT_DTYPES}
    for name in sorted(name for name in weights.names() if fingerprinted(name)):
        tensor = weights.get(name)
        for dtype, digest in digests.items():
            digest.update(name.encode())
            digest.update(tensor.detach().to(dtype).contiguous().view(torch.uint8).numpy().tobytes())
    return {digest.hexdigest() for digest in digests.values()}


def check_fingerprint(weights: BaseWeights, expected: str | None, *, source: str, meta_path: Path) -> None:
    """The base must be the one the adapter was trained on; a checkpoint without a fingerprint is not checked."""
    if expected is None:
        return
    if expected not in fingerprints(weights):
        raise CheckpointError(
            f"{meta_path}: base model {source!r} has a different fingerprint than the base this adapter was trained "
            f"on (base_fingerprint {expected[:12]}...); merging would build a model nobody trained"
        )
