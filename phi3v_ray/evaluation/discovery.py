"""Find checkpoints below the paths a user gives, check their layout, and key each by the content of its weights.

The content key (not the path) decides whether a checkpoint was already scored: Ray Tune may move or rename trial
directories, and a checkpoint rewritten in place must be scored again. A checkpoint that cannot be used is returned
with a reason instead of stopping the whole evaluation. A sweep or checkpoint given as a URI is inspected in a local
cached copy (phi3v_ray.checkpoint.local_checkpoint), and its weights keep their URI, so a predictor actor on another
node fetches them itself instead of reading the driver's disk.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from phi3v_ray.checkpoint import (
    ADAPTER_DIR,
    ADAPTER_FILES,
    ENGINE_DIR,
    META_FILE,
    MODEL_DIR,
    MODEL_FILES,
    CheckpointMeta,
    base_model_key,
    exported_model_meta,
    is_exported_model_dir,
    local_checkpoint,
    parse_meta,
)
from phi3v_ray.config import ModelSection
from phi3v_ray.errors import CheckpointError
from phi3v_ray.model.loading import PICKLE_SUFFIXES  # weight files never opened: they unpickle arbitrary code
from phi3v_ray.storage import is_uri


@dataclass(frozen=True)
class CheckpointInfo:
    """A usable checkpoint directory: where it is, its validated meta, and the key of its contents."""

    name: str
    path: Path
    meta: CheckpointMeta
    content_key: str
    uri: str | None = None  # where it is stored when `path` is a local copy of a bucket's checkpoint
    exported: bool = (
        False  # an official-layout export (phi3v-ray export): the weights are the directory itself
    )

    @property
    def mode(self) -> str:
        """ "lora" or "full"."""
        return self.meta.mode

    @property
    def base_model(self) -> ModelSection:
        """The base model the checkpoint's weights belong to."""
        return self.meta.base_model

    @property
    def weights_dir(self) -> Path:
        """adapter/ (LoRA) or model/ (full fine-tune), or an export itself: what a predictor loads."""
        return self.path if self.exported else self.path / self.meta.weights_dir_name

    @property
    def weights_source(self) -> str:
        """The weights directory as a predictor anywhere in the cluster can reach it: its URI, else its path."""
        if self.uri is None:
            return str(self.weights_dir)
        if self.exported:
            return self.uri
        return f"{self.uri.rstrip('/')}/{self.meta.weights_dir_name}"


@dataclass(frozen=True)
class BrokenCheckpoint:
    """A directory with a meta.json that cannot be evaluated, and why."""

    name: str
    path: Path
    reason: str


def _hash_files(files: Iterable[Path], root: Path, digest: hashlib._Hash) -> None:
    for file in sorted(files):
        digest.update(str(file.relative_to(root)).encode() + b"\0")
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")


def content_key(path: Path, meta: CheckpointMeta, weights_dir: Path | None = None) -> str:
    """sha256 over the weight/config files that determine predictions plus the base identity (engine/ excluded)."""
    digest = hashlib.sha256()
    if weights_dir is None:
        digest.update(base_model_key(meta.base_model).encode())
        weights_dir = path / meta.weights_dir_name
    _hash_files((p for p in weights_dir.rglob("*") if p.is_file()), path, digest)
    return digest.hexdigest()[:32]


def _inspect(path: Path, name: str, uri: str | None = None) -> CheckpointInfo | BrokenCheckpoint:
    """Validate one checkpoint directory's meta and layout without loading any weights."""
    if is_exported_model_dir(path):
        try:
            meta = exported_model_meta(path)
        except CheckpointError as error:
            return BrokenCheckpoint(name, path, str(error))
        return CheckpointInfo(name, path, meta, content_key(path, meta, weights_dir=path), uri, exported=True)
    try:
        meta = parse_meta(path / META_FILE)
    except CheckpointError as error:
        return BrokenCheckpoint(name, path, str(error))
    weights_dir = path / meta.weights_dir_name
    if not weights_dir.is_dir():
        return BrokenCheckpoint(name, path, f"{weights_dir}: missing (meta.json says mode {meta.mode!r})")
    pickled = sorted(p.name for p in weights_dir.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickled:
        return BrokenCheckpoint(name, path, f"{weights_dir}: pickle weight files {pickled} are never loaded")
    required = ADAPTER_FILES if meta.mode == "lora" else MODEL_FILES
    missing = [file for file in required if not (weights_dir / file).is_file()]
    if meta.mode == "full" and not any(weights_dir.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        return BrokenCheckpoint(name, path, f"{weights_dir}: missing {', '.join(missing)}")
    return CheckpointInfo(name, path, meta, content_key(path, meta), uri)


def _checkpoint_dirs(root: Path) -> list[Path]:
    """`root` itself when it holds meta.json, else every directory below it that does (sorted, engine/ skipped)."""
    if (root / META_FILE).is_file() or is_exported_model_dir(root):
        return [root]
    found = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in (ENGINE_DIR, ADAPTER_DIR, MODEL_DIR, "wandb"))
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
        root = local_checkpoint(given)
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
            uri = _stored_uri(given, relative)
            result = _inspect(directory, name, uri)
            (good if isinstance(result, CheckpointInfo) else broken).append(result)
    names = [c.name for c in good] + [b.name for b in broken]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise CheckpointError(
            f"checkpoints with the same name {sorted(duplicates)}: pass their parent directory instead"
        )
    return good, broken


def _stored_uri(given: str | os.PathLike[str], relative: str) -> str | None:
    """The URI of a checkpoint found `relative` below a given URI; None for a local root."""
    text = os.fspath(given)
    if not is_uri(text):
        return None
    return text.rstrip("/") if relative == "." else f"{text.rstrip('/')}/{relative}"


def single_checkpoint(directory: str | os.PathLike[str]) -> CheckpointInfo:
    """The one usable checkpoint at `directory`; CheckpointError says why it is broken or that there are several."""
    good, broken = discover_checkpoints([directory])
    if broken:
        raise CheckpointError(f"{broken[0].path}: {broken[0].reason}")
    if len(good) > 1:
        raise CheckpointError(
            f"{directory}: holds {len(good)} checkpoints (e.g. {good[0].path}); pass one checkpoint directory"
        )
    return good[0]
