"""Ray Data predictor: one base model per actor, every checkpoint's LoRA adapter loaded by name, batched greedy
generation per adapter.

Loading the 4.2B base once and swapping megabyte-sized adapters is what makes scoring a whole sweep cheap; the
naive way (reload the model per checkpoint, one product at a time) is the baseline in benchmarks/evaluate.py.
A checkpoint that fails to load in the actor yields rows carrying `load_error`, so no (checkpoint, product) pair
disappears silently.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from phi3v_ray.checkpoint import ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, local_checkpoint, model_source
from phi3v_ray.config import ModelSection
from phi3v_ray.data.answers import parse_answer
from phi3v_ray.errors import CheckpointError

if TYPE_CHECKING:
    from phi3v_ray.evaluation.discovery import CheckpointInfo

BASE_NAME = "base"
# Columns of one evaluation row (docs/interfaces.md "Evaluation row"), in output order.
OUTPUT_COLUMNS = (
    "checkpoint",
    "content_key",
    "product_code",
    "prediction",
    "pred_title",
    "pred_category",
    "pred_full_price",
    "parse_error",
    "load_error",
    "title",
    "category",
    "full_price",
)
_TRUTH_COLUMNS = ("product_code", "title", "category", "full_price")


@dataclass(frozen=True)
class ContestantSpec:
    """One model the predictor answers with: the base itself, a LoRA adapter dir, or a full model dir."""

    name: str
    kind: str  # "base" | "lora" | "full"
    path: str | None
    content_key: str

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, so specs travel to Ray actors as constructor kwargs."""
        return asdict(self)

    @classmethod
    def of_checkpoint(cls, checkpoint: CheckpointInfo) -> ContestantSpec:
        """The contestant a discovered checkpoint plays as: its adapter or model directory, keyed by content."""
        return cls(checkpoint.name, checkpoint.mode, checkpoint.weights_source, checkpoint.content_key)


def base_model_kwargs(base: ModelSection) -> dict[str, Any]:
    """CheckpointPredictor's base-model arguments for a ModelSection: the model loaded the way training loaded it."""
    return {
        "base_source": model_source(base),
        "dtype": base.dtype,
        "attention": base.attention,
        "tokenizer": base.tokenizer,
    }


def check_adapter_fits(adapter_dir: Path, model: Any) -> None:
    """Read the whole adapter file and check every tensor's shape against the base, before peft touches the model.

    peft injects LoRA layers before it reads the weights, so a corrupt or mismatched adapter found late would leave
    half-injected layers in the shared base; checking first keeps one bad checkpoint from spoiling the others.
    """
    from safetensors.torch import load_file

    config_path = adapter_dir / ADAPTER_CONFIG_FILE
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{config_path}: unreadable adapter config ({error})") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{config_path}: peft_type {config.get('peft_type')!r}; expected 'LORA'")
    weights_path = adapter_dir / ADAPTER_WEIGHTS_FILE
    try:
        tensors = load_file(str(weights_path))
    except Exception as error:  # safetensors raises its own error types for truncated/corrupt files
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({error})") from None
    base_shapes = {name: tuple(p.shape) for name, p in model.state_dict().items()}
    for key, tensor in tensors.items():
        module_key = key.removeprefix("base_model.model.")
        for marker, axis, attribute in ((".lora_A.", 1, "in_features"), (".lora_B.", 0, "out_features")):
            if marker in module_key:
                module_name = module_key.split(marker)[0]
                try:
                    module = model.get_submodule(module_name)
                except AttributeError:
                    raise CheckpointError(
                        f"{weights_path}: tensor {key} names no module of the base model"
                    ) from None
                expected = getattr(module, attribute, None)
                if expected is not None and tensor.shape[axis] != expected:
                    raise CheckpointError(
                        f"{weights_path}: {key} has shape {tuple(tensor.shape)} but {module_name}.{attribute} "
                        f"is {expected}; the adapter was trained on a different base model"
                    )
                break
        else:
            expected_shape = base_shapes.get(module_key)
            if expected_shape is not None and tuple(tensor.shape) != expected_shape:
                raise CheckpointError(
                    f"{weights_path}: {key} has shape {tuple(tensor.shape)}, the base has {expected_shape}"
                )


def first_stop(ids: Sequence[int], stop_ids: set[int]) -> list[int]:
    """Generated ids up to (not including) the first stop token; a row that finished early is padded after it."""
    kept: list[int] = []
    for token in ids:
        if int(token) in stop_ids:
            break
        kept.append(int(token))
    return kept


def _use_reserved_cpus(torch: Any) -> None:
    """Inside a Ray actor, run torch on as many threads as CPUs the actor reserved (Ray sets OMP_NUM_THREADS=1
    for 1-CPU actors, which would also pin a 4-CPU actor to one thread); outside Ray leave torch's default."""
    try:
        import ray

        if not ray.is_initialized():
            return
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # not in a Ray worker, or no runtime context: keep the default
        return
    if cpus:
        torch.set_num_threads(max(1, int(cpus)))


class CheckpointPredictor:
    """Ray Data class UDF: answers every product in a batch with every contestant, one row per pair."""

    def __init__(
        self,
        base_source: str,
        contestants: list[dict[str, Any]],
        *,
        max_new_tokens: int = 48,
        dtype: str = "float32",
        attention: str = "sdpa",
        tokenizer: str | None = None,
        max_rows_per_generate: int = 128,
    ) -> None:
        import torch

        from phi3v_ray.model.loading import load_model
        from phi3v_ray.model.processing import Phi3VProcessor

        self.torch = torch
        _use_reserved_cpus(torch)
        self.max_new_tokens = max_new_tokens
        self.max_rows_per_generate = max_rows_per_generate
        self.model, loaded_tokenizer = load_model(
            base_source, dtype=dtype, attention=attention, tokenizer=tokenizer
        )
        self.model.eval()
        self.processor = Phi3VProcessor.from_config(self.model.config, loaded_tokenizer)
        self.stop_ids = set(self.processor.stop_token_ids)
        self.specs = [ContestantSpec(**spec) for spec in contestants]
        self.load_errors: dict[str, str] = {}
        self.adapter_names: dict[
            str, str
        ] = {}  # contestant name -> peft adapter name (no dots allowed there)
        self.full_models: dict[str, Any] = {}
        self.peft_model: Any = None
        for index, spec in enumerate(self.specs):
            try:
                if spec.kind == "lora":
                    self._load_adapter(spec, f"ckpt{index}")
                elif spec.kind == "full":
                    weights = str(local_checkpoint(str(spec.path)))  # a URI: copied to this node first
                    model, _ = load_model(weights, dtype=dtype, attention=attention, tokenizer=tokenizer)
                    self.full_models[spec.name] = model.eval()
                elif spec.kind != "base":
                    raise CheckpointError(f"{spec.name}: unknown contestant kind {spec.kind!r}")
            except Exception as error:  # one unloadable checkpoint must not stop the others
                self.load_errors[spec.name] = f"{type(error).__name__}: {error}".splitlines()[0]
        # Decided once, when every adapter is in: a walk over all modules is too slow for every batch.
        self.routable_per_row = self.peft_model is not None and self._adapters_routable_per_row()

    def _load_adapter(self, spec: ContestantSpec, adapter_name: str) -> None:
        """Add one adapter under its own name; the first one wraps the base in a PeftModel."""
        from peft import PeftModel

        adapter_dir = local_checkpoint(str(spec.path))  # a URI: copied to this node first
        check_adapter_fits(adapter_dir, self.model)
        try:
            if self.peft_model is None:
                self.peft_model = PeftModel.from_pretrained(
                    self.model, str(adapter_dir), adapter_name=adapter_name, is_trainable=False
                )
            else:
                self.peft_model.load_adapter(str(adapter_dir), adapter_name=adapter_name, is_trainable=False)
        except Exception:
            if self.peft_model is not None and adapter_name in self.peft_model.peft_config:
                self.peft_model.delete_adapter(adapter_name)
            raise
        self.adapter_names[spec.name] = adapter_name

    def _generate(self, model: Any, batch: dict[str, Any], **extra: Any) -> list[str]:
        """Greedy generation with KV cache for a left-padded batch; returns the decoded answer of each row."""
        output = model.generate(
            **batch,
            **extra,
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            use_cache=True,
            eos_token_id=self.processor.stop_token_ids,
            pad_token_id=self.processor.pad_token_id,
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :].tolist()
        return [self.processor.decode(first_stop(row, self.stop_ids)) for row in new_tokens]

    def answers_for(self, spec: ContestantSpec, batch: dict[str, Any]) -> list[str]:
        """Every row's answer from one contestant (set_adapter for LoRA, adapters disabled for the base)."""
        with self.torch.inference_mode():
            if spec.kind == "full":
                return self._generate(self.full_models[spec.name], batch)
            if spec.kind == "base":
                if self.peft_model is None:
                    return self._generate(self.model, batch)
                with self.peft_model.disable_adapter():
                    return self._generate(self.model, batch)
            self.peft_model.set_adapter(self.adapter_names[spec.name])
            return self._generate(self.model, batch)

    def _mixed_groups(self, size: int) -> list[list[ContestantSpec]]:
        """Contestants answered together in one mixed-adapter generate (LoRA adapters, and the base as `__base__`),
        chunked so one generate holds at most `max_rows_per_generate` rows (and at least one contestant)."""
        if not self.routable_per_row:
            return []
        mixable = [
            spec
            for spec in self.specs
            if spec.name not in self.load_errors and (spec.kind == "lora" or spec.kind == "base")
        ]
        per_chunk = max(1, self.max_rows_per_generate // max(1, size))
        return [mixable[i : i + per_chunk] for i in range(0, len(mixable), per_chunk)]

    def _adapters_routable_per_row(self) -> bool:
        """Whether peft can route every adapted module per batch row (else: one generate per contestant).

        peft routes a mixed batch along dim 0 of each adapted module's input. That is the batch row for the language
        model and the per-image projector, but CLIP's input is crops (rows would be mis-routed), and a wrapped
        module that is not a plain layer (e.g. an adapter from before the projector was saved layer by layer)
        cannot be routed at all.
        """
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import ModulesToSaveWrapper

        from phi3v_ray.model.module_names import VISION_TOWER

        for name, module in self.peft_model.named_modules():
            if isinstance(module, ModulesToSaveWrapper):
                if not isinstance(module.original_module, self.torch.nn.Linear):
                    return False
            elif isinstance(module, BaseTunerLayer) and f".{VISION_TOWER}." in f".{name}.":
                return False
        return True

    def mixed_answers(self, specs: list[ContestantSpec], examples: list[dict[str, Any]]) -> list[list[str]]:
        """Every row's answer from several contestants in one generate: the batch repeated once per contestant,
        each copy routed to its own adapter by peft's `adapter_names` (the base copy uses `__base__`).

        One generate over len(specs) × len(examples) rows instead of len(specs) generates: the per-step overhead of
        the small model dominates on CPU, so this is where the job's batching pays. Each row still sees exactly the
        weights it would under set_adapter; only the batch it shares a matmul with changes.
        """
        collated = self.processor.collate(examples * len(specs), padding_side="left")
        collated.pop("labels", None)
        names = [
            "__base__" if spec.kind == "base" else self.adapter_names[spec.name]
            for spec in specs
            for _ in examples
        ]
        with self.torch.inference_mode():
            answers = self._generate(self.peft_model, collated, adapter_names=names)
        size = len(examples)
        return [answers[k * size : (k + 1) * size] for k in range(len(specs))]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One numpy batch of prompt-only prepared examples in, len(batch) × len(contestants) evaluation rows out."""
        size = len(batch["input_ids"])
        examples = [
            {
                "input_ids": batch["input_ids"][i],
                "pixel_values": batch["pixel_values"][i],
                "image_size": batch["image_size"][i],
            }
            for i in range(size)
        ]
        answered: dict[str, list[str]] = {}
        for group in self._mixed_groups(size):
            answered.update(
                zip((spec.name for spec in group), self.mixed_answers(group, examples), strict=True)
            )
        collated: dict[str, Any] | None = None
        columns: dict[str, list[Any]] = {name: [] for name in OUTPUT_COLUMNS}
        for spec in self.specs:
            load_error = self.load_errors.get(spec.name)
            if load_error:
                answers: list[str | None] = [None] * size
            elif spec.name in answered:
                answers = list(answered[spec.name])
            else:
                if collated is None:
                    collated = self.processor.collate(examples, padding_side="left")
                    collated.pop("labels", None)
                answers = list(self.answers_for(spec, collated))
            for i, answer in enumerate(answers):
                parsed = parse_answer(answer) if answer is not None else None
                columns["checkpoint"].append(spec.name)
                columns["content_key"].append(spec.content_key)
                columns["prediction"].append(answer)
                columns["pred_title"].append(parsed.title if parsed else None)
                columns["pred_category"].append(parsed.category if parsed else None)
                price = parsed.full_price if parsed else None
                columns["pred_full_price"].append(np.nan if price is None else price)
                columns["parse_error"].append(
                    parsed.error if parsed else "not generated: checkpoint failed to load"
                )
                columns["load_error"].append(load_error)
                for truth in _TRUTH_COLUMNS:
                    columns[truth].append(
                        batch[truth][i].item() if hasattr(batch[truth][i], "item") else batch[truth][i]
                    )
        result = {name: np.asarray(values, dtype=object) for name, values in columns.items()}
        result["pred_full_price"] = np.asarray(columns["pred_full_price"], dtype=np.float64)
        result["full_price"] = np.asarray(columns["full_price"], dtype=np.float64)
        return result
