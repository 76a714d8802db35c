"""The checkpoint directory contract, in one place: what training writes and evaluation (and export) read.

A checkpoint is a directory holding
  adapter/           PEFT adapter (LoRA mode) or model/ (full fine-tune: consolidated safetensors + config.json),
  engine/            DeepSpeed resume state (written and read only by phi3v_ray.train.saving),
  probe.safetensors  one validation example's inputs and its last logits at save time,
  parts/             one record per training rank of the files it wrote and their sizes (phi3v_ray.train.resume:
                     a restart trusts only a checkpoint whose every part arrived whole), and
  meta.json          a `CheckpointMeta`: format tag, mode, the base model's ModelSection, the experiment, progress.

Readers get a typed `CheckpointMeta`, so nobody guesses a missing field's default: the base model's dtype, attention
or tokenizer is whatever its validated ModelSection says. Errors name the file and the key that is wrong.

A checkpoint may live in a bucket (`s3://.../checkpoint_000004`): readers call `local_checkpoint`, which copies what
prediction needs (meta.json, probe, adapter/ or model/; never the large engine/) into a local cache folder keyed by
the URI, because PEFT, transformers and safetensors only open local files.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from phi3v_ray.config import ModelSection
from phi3v_ray.errors import CheckpointError
from phi3v_ray.storage import is_uri, location

FORMAT = "phi3v-ray-checkpoint/1"
ADAPTER_DIR, MODEL_DIR, ENGINE_DIR = "adapter", "model", "engine"
META_FILE = "meta.json"
PROBE_FILE = "probe.safetensors"
# Files a weights directory must hold to be loadable (besides, for a full model, at least one *.safetensors).
ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"  # peft's names
ADAPTER_FILES = (ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE)
MODEL_FILES = ("config.json",)
Mode = Literal["lora", "full"]


class CheckpointMeta(BaseModel):
    """meta.json of a checkpoint. Unknown keys are errors: a new field means a new FORMAT tag."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal["phi3v-ray-checkpoint/1"] = FORMAT
    mode: Mode
    base_model: ModelSection = Field(
        description="the base the weights were trained on (full: what it started from)"
    )
    experiment: dict[str, Any] = Field(
        default_factory=dict, description="ExperimentConfig.to_plain() of the run"
    )
    step: int = Field(ge=0)
    epoch: int = Field(0, ge=0)
    metrics: dict[str, float] = Field(default_factory=dict)
    trial: str | None = None
    base_fingerprint: str | None = Field(
        None,
        description="sha256 of sampled base tensors (LoRA): proves the adapter meets the base it trained on",
    )
    base_path_in_storage: str | None = Field(
        None,
        description="base_model.path relative to run.storage_path, when both were local folders: the checkpoint "
        "still finds its base after the whole tree (runs and base) moves",
    )

    @property
    def weights_dir_name(self) -> str:
        """adapter/ for LoRA, model/ for a full fine-tune."""
        return weights_dir_name(self.mode)


def weights_dir_name(mode: str) -> str:
    """The directory holding the weights that determine predictions for a checkpoint of this mode."""
    return ADAPTER_DIR if mode == "lora" else MODEL_DIR


def _validation_message(error: ValidationError, path: Path) -> str:
    """One line per problem, naming the file and the dotted key (meta.json is written by us: no spelling hints)."""
    fixed = {"extra_forbidden": f"unknown key (not part of {FORMAT})", "missing": "missing"}
    return "\n".join(
        f"{path}: {'.'.join(str(part) for part in item['loc'])}: "
        + fixed.get(item["type"], f"{item['msg']} (got {item.get('input')!r})")
        for item in error.errors()
    )


def parse_meta(path: str | Path) -> CheckpointMeta:
    """A meta.json file read and validated; CheckpointError says which file and which key is wrong."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    if raw.get("format") != FORMAT:
        raise CheckpointError(f"{path}: format {raw.get('format')!r}, expected {FORMAT!r}")
    try:
        meta = CheckpointMeta.model_validate(raw)
    except ValidationError as error:
        raise CheckpointError(_validation_message(error, path)) from None
    return _with_reachable_base(meta, path)


def storage_relative_base(base: ModelSection, storage_path: str) -> str | None:
    """`base.path` relative to the run's storage folder when both are local and the base is a folder (else None),
    recorded in meta.json so that moving runs and base together does not break the checkpoint."""
    if not base.path or is_uri(base.path) or is_uri(storage_path) or not Path(base.path).is_dir():
        return None
    # Both made absolute from the same cwd: their relation holds whatever the cwd of this process is.
    return os.path.relpath(os.path.abspath(base.path), os.path.abspath(storage_path))


def _with_reachable_base(meta: CheckpointMeta, meta_path: Path) -> CheckpointMeta:
    """The meta with base_model.path pointing at a folder that exists here; a base that moved with the checkpoint's
    storage is found again through base_path_in_storage. CheckpointError names the file to fix when it is gone."""
    recorded = meta.base_model.path
    if not recorded or is_uri(recorded) or Path(recorded).exists():
        return meta
    if not meta.base_path_in_storage and not os.path.isabs(recorded):
        return meta  # a hub id (org/name) is not a local path; the loader resolves it
    if meta.base_path_in_storage:
        for storage in Path(os.path.abspath(meta_path)).parent.parents:
            candidate = storage / meta.base_path_in_storage
            if (candidate / "config.json").is_file():
                moved = meta.base_model.model_copy(update={"path": str(candidate.resolve())})
                return meta.model_copy(update={"base_model": moved})
    raise CheckpointError(
        f"{meta_path}: base_model.path {recorded}: no such folder, so the base model these weights belong to cannot "
        f"be found; move it back or fix base_model.path in this file"
    )


def checkpoint_cache_root() -> Path:
    """Where checkpoint URIs are copied on this machine: $PHI3V_CHECKPOINT_CACHE, else the temp dir."""
    configured = os.environ.get("PHI3V_CHECKPOINT_CACHE")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "phi3v-checkpoints"


def local_checkpoint(where: str | os.PathLike[str]) -> Path:
    """A local folder holding the checkpoint (or sweep) at `where`: itself when local, else a cached copy.

    The copy keeps the URI's last name (checkpoint names in a leaderboard are unchanged) under a folder keyed by the
    whole URI; files already copied with the same size are not fetched again. engine/ is skipped: only a training
    run resumes from it, and Ray Train reads it from storage itself (W&B run folders are skipped too).
    """
    text = os.fspath(where)
    if not is_uri(text):
        return Path(text)
    source = location(text)
    if not source.exists():
        raise CheckpointError(f"{source.uri}: no such checkpoint or sweep (nothing stored there)")
    from phi3v_ray.storage import download_tree

    digest = hashlib.sha256(source.uri.encode()).hexdigest()[:16]
    target = checkpoint_cache_root() / digest / (source.name or "checkpoint")
    download_tree(source, target, skip=(ENGINE_DIR, "wandb"))
    return target


def read_meta(directory: str | Path) -> CheckpointMeta:
    """The meta of the checkpoint in `directory` (a local path or a URI)."""
    directory = local_checkpoint(directory)
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory}: no {META_FILE} (not a phi3v-ray checkpoint)")
    return parse_meta(path)


def write_meta(directory: str | Path, meta: CheckpointMeta) -> Path:
    """Write meta.json into `directory` (rank 0 only in a training run)."""
    path = Path(directory) / META_FILE
    path.write_text(json.dumps(meta.model_dump(mode="json"), indent=2))
    return path


# ---- an exported model (phi3v-ray export): the official layout, no meta.json ------------------------------------
EXPORT_WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors")


def is_exported_model_dir(directory: str | Path) -> bool:
    """A model directory in the official layout (config.json + safetensors) without meta.json: an export."""
    directory = Path(directory)
    return (
        not (directory / META_FILE).is_file()
        and (directory / "config.json").is_file()
        and any((directory / name).is_file() for name in EXPORT_WEIGHT_FILES)
    )


def exported_model_meta(directory: str | Path) -> CheckpointMeta:
    """The meta an export plays under in evaluate/predict: a full model that is its own base (dtype and num_crops
    from its config.json and preprocessor_config.json)."""
    directory = Path(directory)
    settings: dict[str, Any] = {}
    for name in ("config.json", "preprocessor_config.json"):
        path = directory / name
        if path.is_file():
            try:
                settings.update(json.loads(path.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                raise CheckpointError(f"{path}: not valid JSON ({error})") from None
    dtype = settings.get("torch_dtype", "float32")
    try:
        base = ModelSection(
            preset=None,
            path=str(directory),
            dtype=dtype if dtype in ("float32", "bfloat16", "float16") else "float32",
            num_crops=settings.get("num_crops", 16),
        )
    except ValidationError as error:
        raise CheckpointError(_validation_message(error, directory / "config.json")) from None
    return CheckpointMeta(mode="full", base_model=base, step=0)


# ---- the base model a checkpoint needs ---------------------------------------------------------------------------


def model_source(base: ModelSection) -> str:
    """What `load_model` takes for a ModelSection: its `path` when set, else its preset."""
    source = base.path or base.preset
    if not source:
        raise CheckpointError("base_model: neither path nor preset is set, so there is no base model to load")
    return source


def base_model_key(base: ModelSection) -> str:
    """Identity of a base model: checkpoints with equal keys share one loaded base in a predictor actor."""
    identity = {
        "source": model_source(base),
        "tokenizer": base.tokenizer,
        "num_crops": base.num_crops,
        "dtype": base.dtype,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def load_base_model(base: ModelSection, *, dtype: str | None = None) -> tuple[torch.nn.Module, Any]:
    """(model, tokenizer) as the ModelSection describes them, the way training built them."""
    from phi3v_ray.model.loading import load_model

    return load_model(
        model_source(base), dtype=dtype or base.dtype, attention=base.attention, tokenizer=base.tokenizer
    )


def load_trained_model(directory: str | Path, *, dtype: str | None = None) -> torch.nn.Module:
    """Base model + adapter (or the consolidated model) from a checkpoint (a local path or a URI); dtype defaults to
    the base model's."""
    directory = local_checkpoint(directory)
    meta = read_meta(directory)
    base = meta.base_model
    if meta.mode == "full":
        from phi3v_ray.model.loading import load_model

        model, _ = load_model(
            str(directory / MODEL_DIR),
            dtype=dtype or base.dtype,
            attention=base.attention,
            tokenizer=base.tokenizer,
        )
        return model
    model, _ = load_base_model(base, dtype=dtype)
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(directory / ADAPTER_DIR))


def probe_matches(model: torch.nn.Module, directory: str | Path, *, atol: float = 1e-5) -> float:
    """Max |logit difference| between `model` now and the training engine at save time on the stored probe.

    Raises CheckpointError when it exceeds `atol` (wrong base, adapter not applied, dtype drift).
    """
    from safetensors.torch import load_file

    path = local_checkpoint(directory) / PROBE_FILE
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
