"""Find checkpoints below the paths a user gives, check their layout, and key each by the content of its weights.

The content key (not the path) decides whether a checkpoint was already scored: Ray Tune may move or rename trial
directories, and a checkpoint rewritten in place must be scored again. A checkpoint that cannot be used is returned
with a reason instead of stopping the whole evaluation.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phi3v_ray.errors import CheckpointError

META_FILE = "meta.json"
CHECKPOINT_FORMAT = "phi3v-ray-checkpoint/1"
# Weight files we refuse to open: they unpickle arbitrary code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


@dataclass(frozen=True)
class CheckpointInfo:
    """A usable checkpoint directory: where it is, how it loads, and the key of its contents."""

    name: str
    path: Path
    mode: str  # "lora" | "full"
    base_model: dict[str, Any]
    content_key: str
    meta: dict[str, Any] = field(repr=False, compare=False)

    @property
    def adapter_dir(self) -> Path:
        """PEFT adapter directory (LoRA checkpoints)."""
        return self.path / "adapter"

    @property
    def model_dir(self) -> Path:
        """Consolidated model directory (full fine-tunes)."""
        return self.path / "model"


@dataclass(frozen=True)
class BrokenCheckpoint:
    """A directory with a meta.json that cannot be evaluated, and why."""

    name: str
    path: Path
    reason: str


def base_model_source(base_model: dict[str, Any]) -> str:
    """What `load_model` takes for a ModelSection dict: its `path` when set, else its preset ("tiny")."""
    return str(base_model.get("path") or base_model.get("preset") or "tiny")


def base_model_key(base_model: dict[str, Any]) -> str:
    """Identity of a base model: checkpoints with equal keys share one loaded base in a predictor actor."""
    identity = {
        "source": base_model_source(base_model),
        "tokenizer": base_model.get("tokenizer"),
        "num_crops": base_model.get("num_crops", 16),
        "dtype": base_model.get("dtype", "float32"),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _hash_files(files: Iterable[Path], root: Path, digest: hashlib._Hash) -> None:
    for file in sorted(files):
        digest.update(str(file.relative_to(root)).encode() + b"\0")
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")


def content_key(path: Path, mode: str, base_model: dict[str, Any]) -> str:
    """sha256 over the weight/config files that determine predictions plus the base identity (engine/ excluded)."""
    digest = hashlib.sha256()
    digest.update(base_model_key(base_model).encode())
    weights_dir = path / ("adapter" if mode == "lora" else "model")
    _hash_files((p for p in weights_dir.rglob("*") if p.is_file()), path, digest)
    return digest.hexdigest()[:32]


def _inspect(path: Path, name: str) -> CheckpointInfo | BrokenCheckpoint:
    """Validate one checkpoint directory's layout without loading any weights."""
    meta_path = path / META_FILE
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        return BrokenCheckpoint(name, path, f"{meta_path}: not valid JSON ({error})")
    if not isinstance(meta, dict):
        return BrokenCheckpoint(name, path, f"{meta_path}: expected a JSON object, got {type(meta).__name__}")
    mode = meta.get("mode", "lora")
    if mode not in ("lora", "full"):
        return BrokenCheckpoint(name, path, f"{meta_path}: mode must be 'lora' or 'full' (got {mode!r})")
    base_model = meta.get("base_model")
    if not isinstance(base_model, dict):
        return BrokenCheckpoint(
            name, path, f"{meta_path}: base_model must be a ModelSection object (got {base_model!r})"
        )
    weights_dir = path / ("adapter" if mode == "lora" else "model")
    if not weights_dir.is_dir():
        return BrokenCheckpoint(name, path, f"{weights_dir}: missing (meta.json says mode {mode!r})")
    pickled = sorted(p.name for p in weights_dir.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        return BrokenCheckpoint(name, path, f"{weights_dir}: pickle weight files {pickled} are never loaded")
    required = ["adapter_config.json", "adapter_model.safetensors"] if mode == "lora" else ["config.json"]
    missing = [file for file in required if not (weights_dir / file).is_file()]
    if mode == "full" and not any(weights_dir.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        return BrokenCheckpoint(name, path, f"{weights_dir}: missing {', '.join(missing)}")
    return CheckpointInfo(name, path, mode, base_model, content_key(path, mode, base_model), meta)


def _checkpoint_dirs(root: Path) -> list[Path]:
    """`root` itself when it holds meta.json, else every directory below it that does (sorted, engine/ skipped)."""
    if (root / META_FILE).is_file():
        return [root]
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in ("engine", "adapter", "model", "wandb"))
        if META_FILE in files:
            found.append(Path(directory))
            subdirs[:] = []  # a checkpoint's own subfolders are not further checkpoints
    return found


def discover_checkpoints(
    paths: Sequence[str | os.PathLike[str]],
) -> tuple[list[CheckpointInfo], list[BrokenCheckpoint]]:
    """All checkpoints below `paths` (sweep dirs or checkpoint dirs), named by their path below the given root."""
    if not paths:
        raise CheckpointError("no checkpoints given: pass a sweep directory or checkpoint directories")
    good: list[CheckpointInfo] = []
    broken: list[BrokenCheckpoint] = []
    seen: set[Path] = set()
    for given in paths:
        root = Path(given)
        if not root.is_dir():
            raise CheckpointError(f"{root}: no such checkpoint or sweep directory")
        directories = _checkpoint_dirs(root)
        if not directories:
            raise CheckpointError(f"{root}: no checkpoint found (no directory below it holds {META_FILE})")
        for directory in directories:
            resolved = directory.resolve()
            if resolved in seen:
                continue
            seen.add(resolved)
            relative = directory.relative_to(root).as_posix()
            name = root.resolve().name if relative == "." else f"{root.resolve().name}/{relative}"
            result = _inspect(directory, name)
            (good if isinstance(result, CheckpointInfo) else broken).append(result)
    names = [c.name for c in good] + [b.name for b in broken]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise CheckpointError(
            f"checkpoints with the same name {sorted(duplicates)}: pass their parent directory instead"
        )
    return good, broken
