"""Write tensors as they come into safetensors shards of at most `max_shard_size` bytes, plus the index.

Only the shard being filled is held in memory, so an export's peak stays near one shard, not one model. The
official layout's names are used: model-00001-of-0000N.safetensors and model.safetensors.index.json (written even
for a single shard, as the official checkpoint has one).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from phi3v_ray.model.loading import INDEX_FILE

SHARD_METADATA = {"format": "pt"}


class ShardWriter:
    """Accumulates tensors; a full shard is written to disk and dropped from memory."""

    def __init__(self, directory: Path, max_shard_size: int) -> None:
        self.directory = directory
        self.max_shard_size = max_shard_size
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._written: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue one tensor; flush the current shard first when it would overflow."""
        size = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_size:
            self._flush()
        self._pending[name] = tensor.detach().contiguous()
        self._pending_bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        path = self.directory / f"model-{len(self._written) + 1:05d}.partial.safetensors"
        save_file(self._pending, str(path), metadata=SHARD_METADATA)
        self._written.append((path, list(self._pending)))
        self._pending, self._pending_bytes = {}, 0

    def close(self) -> dict[str, str]:
        """Write the last shard, give every shard its final `-of-N` name, write the index; return the weight map."""
        if self._pending:
            self._flush()
        count = len(self._written)
        weight_map: dict[str, str] = {}
        for number, (path, names) in enumerate(self._written, start=1):
            final = f"model-{number:05d}-of-{count:05d}.safetensors"
            path.rename(self.directory / final)
            weight_map.update(dict.fromkeys(names, final))
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
        return weight_map
