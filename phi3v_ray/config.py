"""Typed experiment configuration, loaded from experiments/*.yaml plus `--set key=value` overrides.

Every section rejects unknown keys and range-checks values, so a typo or an impossible value fails before Ray
starts, with one line naming the dotted key (`optim.lr: must be greater than 0 (got -0.001)`).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from phi3v_ray.config_renames import rename_old_sections, renamed_dotted_key
from phi3v_ray.errors import ConfigError

LANGUAGE_LORA_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
VISION_LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSection(Section):
    """Which base model to fine-tune and how to run it."""

    preset: Literal["tiny", "official"] | None = Field(
        "tiny", description="built-in architecture; ignored when `path` is set"
    )
    path: str | None = Field(
        None, description="local directory or hub id of a checkpoint (official layout or ours)"
    )
    tokenizer: str | None = Field(
        None, description="tokenizer directory; default: the model's, or the tiny one"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    attention: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"
    num_crops: int = Field(
        16, ge=1, le=64, description="HD crop budget per image (16 for Phi-3-V, 4 for Phi-3.5-V)"
    )
    gradient_checkpointing: bool = False


class FinetuneSection(Section):
    """What training changes: LoRA adapters (mode = lora, the default) or every weight (mode = full).

    Named `finetune` because it chooses between LoRA and full fine-tuning; the old name `lora` is still read, with a
    deprecation message (phi3v_ray.config_renames).
    """

    mode: Literal["lora", "full"] = "lora"
    rank: int = Field(16, ge=1, le=1024)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: list(LANGUAGE_LORA_TARGETS))
    vision: Literal["frozen", "lora", "full"] = "frozen"
    projector_trainable: bool = True

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one module (e.g. qkv_proj)")
        return value


class OptimSection(Section):
    """AdamW, schedule and batch geometry."""

    lr: float = Field(2e-4, gt=0, lt=1)
    weight_decay: float = Field(0.01, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-7, gt=0)
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    grad_clip: float = Field(1.0, ge=0)
    grad_accum: int = Field(1, ge=1)
    micro_batch: int = Field(2, ge=1)

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0 <= b < 1 for b in value):
            raise ValueError(f"both betas must be in [0, 1) (got {list(value)})")
        return value


class DeepSpeedSection(Section):
    """ZeRO settings turned into a DeepSpeed config by phi3v_ray.train.deepspeed."""

    zero_stage: Literal[2, 3] = 2
    offload_optimizer: bool = False
    offload_param: bool = False
    reduce_bucket_size: int = Field(50_000_000, ge=1)
    allgather_bucket_size: int = Field(50_000_000, ge=1)

    @model_validator(mode="after")
    def _param_offload_needs_zero3(self) -> DeepSpeedSection:
        if self.offload_param and self.zero_stage != 3:
            raise ValueError("offload_param needs zero_stage: 3")
        return self


class ScalingSection(Section):
    """How many Ray Train workers, and what each one reserves."""

    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, ge=0)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="how Ray places the workers' bundles across nodes"
    )

    @model_validator(mode="after")
    def _gpu_workers_reserve_a_gpu(self) -> ScalingSection:
        if self.use_gpu and self.gpus_per_worker <= 0:
            raise ValueError("gpus_per_worker must be greater than 0 when use_gpu is true")
        return self


class RunSection(Section):
    """Length, cadence, storage and reproducibility of one training run."""

    name: str = "phi3v-run"
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs when set")
    eval_every: int = Field(50, ge=1, description="optimizer steps between validations")
    checkpoint_every: int = Field(50, ge=1, description="optimizer steps between checkpoints")
    keep_best: int = Field(2, ge=1)
    storage_path: str = "runs"
    seed: int = 0
    max_failures: int = Field(1, ge=0, description="worker-group restarts from the latest checkpoint")
    controller_failure_limit: int = Field(
        30,
        ge=-1,
        description="tries to place the worker group (each waits RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 60 s) "
        "before the run fails naming what it waited for: 30 gives the autoscaler ~half an hour to replace a lost "
        "spot node; -1 waits forever; tests use 0",
    )
    report_every: int | None = Field(
        None,
        ge=1,
        description="optimizer steps between metric reports to Ray; default: at each validation and checkpoint. "
        "W&B gets every step regardless. Train V2 holds one report per worker until its controller polls "
        "(every 2 s), so per-step reports stall fast steps",
    )
    val_generate_samples: int = Field(
        4, ge=0, description="products shown with generated answers at validation"
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not value or "/" in value or value.startswith("."):
            raise ValueError(f"must be a plain directory name (got {value!r})")
        return value


class DataSection(Section):
    """Where the catalog is and how it is split and preprocessed."""

    catalog_dir: str = "data/sample"
    split_by: Literal["product_code", "title"] = "title"
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    prepared_dir: str | None = Field(
        None, description="cache of prepared splits; default <catalog_dir>/prepared"
    )
    max_train_examples: int | None = Field(None, ge=1)
    max_eval_examples: int | None = Field(None, ge=1)
    length_grouping: bool = True
    preprocess_cpus: float = Field(1.0, gt=0)
    max_example_tokens: int = Field(
        4096,
        ge=64,
        description="longest prepared example (prompt, image tokens and answer); longer rows go to rejects.parquet "
        "as `too_long`. Must not exceed the model's max_position_embeddings (4096 is under both presets')",
    )
    materialize_mb: float = Field(
        1024,
        ge=0,
        description="a prepared split smaller than this (uncompressed) is read once into the Ray object store and "
        "shared by every trial and epoch (0 = always stream from parquet)",
    )
    worker_cache_mb: float = Field(
        2048,
        ge=0,
        description="a Train worker keeps its train/val shard in memory after one full pass when it fits under "
        "this size, so later epochs and validations skip re-reading (0 = always stream)",
    )

    @field_validator("ratios", mode="before")
    @classmethod
    def _ratios_from_text(cls, value: Any) -> Any:
        """`--set data.ratios=0.8,0.1,0.1` reads like `data split --ratios 0.8,0.1,0.1`: one syntax everywhere."""
        if isinstance(value, str) and "," in value:
            try:
                return [float(part) for part in value.split(",")]
            except ValueError:
                return value  # the type check reports it with the value as given
        return value

    @field_validator("ratios")
    @classmethod
    def _ratios_sum_to_one(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(r < 0 for r in value) or abs(sum(value) - 1.0) > 1e-6:
            raise ValueError(f"must be three non-negative numbers summing to 1 (got {list(value)})")
        return value


class TuneSection(Section):
    """Search space and scheduling of a sweep (phi3v-ray tune)."""

    search_space: dict[str, dict[str, Any]] = Field(default_factory=dict)
    search_alg: Literal["random", "grid", "optuna"] = "random"
    num_samples: int = Field(4, ge=1)
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(1, ge=1, description="validations before ASHA may stop a trial")
    reduction_factor: float = Field(2.0, gt=1)
    max_concurrent_trials: int | None = Field(None, ge=1)
    trial_driver_cpus: float = Field(0.5, gt=0)
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    name: str = "sweep"


class EvalSection(Section):
    """Batch evaluation of checkpoints on held-out products (phi3v-ray evaluate)."""

    checkpoints: list[str] = Field(default_factory=list, description="sweep dirs or checkpoint dirs")
    split: Literal["train", "val", "test"] = Field(
        "test", description="split whose figures are reported (and ranked on, unless select_on names another)"
    )
    select_on: Literal["train", "val", "test"] | None = Field(
        None,
        description="split that ranks the contestants; the chosen checkpoint is then scored once on `split`, so "
        "the reported figures play no part in the choice (None: rank on `split` itself)",
    )
    batch_size: int = Field(8, ge=1)
    max_new_tokens: int = Field(48, ge=1)
    primary_metric: str = "category_accuracy"
    output_dir: str | None = None
    include_base: bool = True
    include_trivial: bool = True
    num_actors: int = Field(1, ge=1)
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0)


class WandbSection(Section):
    """Weights & Biases logging; the API key only ever comes from WANDB_API_KEY in the environment."""

    project: str = "phi3v-ray"
    entity: str | None = None
    group: str | None = None
    mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    dir: str | None = None


class ExperimentConfig(Section):
    """One experiment: everything the CLI needs to prepare data, train, sweep and evaluate."""

    model: ModelSection = Field(default_factory=ModelSection)
    finetune: FinetuneSection = Field(default_factory=FinetuneSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection)
    scaling: ScalingSection = Field(default_factory=ScalingSection)
    run: RunSection = Field(default_factory=RunSection)
    data: DataSection = Field(default_factory=DataSection)
    tune: TuneSection = Field(default_factory=TuneSection)
    evaluate: EvalSection = Field(default_factory=EvalSection)
    wandb: WandbSection = Field(default_factory=WandbSection)

    @model_validator(mode="after")
    def _cpu_runs_have_cpu_settings(self) -> ExperimentConfig:
        # Checked here, not in the loop, so a GPU-only setting on a CPU run fails before Ray starts.
        if not self.scaling.use_gpu:
            if self.model.dtype == "float16":
                raise ValueError(
                    "model.dtype: float16 needs a GPU (use float32 or bfloat16 with use_gpu: false)"
                )
            if self.model.attention == "flash_attention_2":
                raise ValueError(
                    "model.attention: flash_attention_2 needs a GPU (use sdpa with use_gpu: false)"
                )
        return self

    def to_plain(self) -> dict[str, Any]:
        """A JSON-safe dict (for W&B run config and meta.json); holds no secrets by construction."""
        return self.model_dump(mode="json")


def _format_validation_error(error: ValidationError, source: str) -> str:
    """One line per problem: `source: dotted.key: message (got value)`."""
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<root>"
        if item["type"] == "extra_forbidden":
            lines.append(f"{source}: {key}: unknown key (check the spelling; see README 'Config reference')")
            continue
        message = item["msg"].removeprefix("Value error, ")
        if not item["loc"]:
            # Cross-section checks name their own dotted key at the start of the message.
            lines.append(f"{source}: {message}")
            continue
        got = item.get("input")
        suffix = "" if isinstance(got, dict) or "got" in message else f" (got {got!r})"
        lines.append(f"{source}: {key}: {message}{suffix}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse `a.b.c=value`; the value is read as YAML so numbers, booleans and lists keep their types."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. optim.lr=1e-4")
    key, raw_value = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {text!r}: empty key")
    return renamed_dotted_key(key.strip(), f"--set {text!r}").split("."), yaml.safe_load(raw_value)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `raw` with each `--set` applied; a key path through a non-mapping is an error."""
    result = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        if path[:2] == ["tune", "search_space"] and len(path) > 3:
            # Search-space keys are themselves dotted config keys: `tune.search_space.optim.lr=...` sets "optim.lr".
            path = [*path[:2], ".".join(path[2:])]
        node = result
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {text!r}: {part!r} is not a section")
            node = child
        node[path[-1]] = value
    return result


def config_from_dict(raw: dict[str, Any], source: str = "<config>") -> ExperimentConfig:
    """Validate a plain dict into an ExperimentConfig, turning pydantic errors into one ConfigError."""
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: expected a mapping of sections (model, finetune, optim, ...), got {type(raw).__name__}"
        )
    try:
        return ExperimentConfig.model_validate(rename_old_sections(raw, source))
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, source)) from None


def load_experiment(path: str | os.PathLike[str], overrides: list[str] | None = None) -> ExperimentConfig:
    """Load experiments/<name>.yaml, apply `--set` overrides, validate; relative paths stay relative to the cwd."""
    file_path = Path(path)
    if not file_path.is_file():
        raise ConfigError(f"{file_path}: no such experiment file")
    try:
        raw = yaml.safe_load(file_path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{file_path}: not valid YAML: {error}") from None
    if isinstance(raw, dict):
        raw = rename_old_sections(raw, str(file_path))  # before `--set`, which already uses the new names
    return config_from_dict(apply_overrides(raw, overrides or []), source=str(file_path))


def check_fits_cluster(config: ExperimentConfig, *, cpus: float, gpus: float) -> None:
    """Fail before Ray Train starts when the workers cannot all be placed: Train would otherwise wait forever."""
    scaling = config.scaling
    need_cpus = scaling.num_workers * scaling.cpus_per_worker
    if need_cpus > cpus + 1e-9:
        raise ConfigError(
            f"scaling.num_workers: {scaling.num_workers} workers x {scaling.cpus_per_worker} CPU need {need_cpus:g} "
            f"CPUs but the cluster has {cpus:g} (lower num_workers or cpus_per_worker)"
        )
    if scaling.use_gpu:
        need_gpus = scaling.num_workers * scaling.gpus_per_worker
        if need_gpus > gpus + 1e-9:
            raise ConfigError(
                f"scaling.num_workers: {scaling.num_workers} workers x {scaling.gpus_per_worker} GPU need "
                f"{need_gpus:g} GPUs but the cluster has {gpus:g} (lower num_workers or set use_gpu: false)"
            )
