"""Model I/O: build a Phi3VForCausalLM from a preset, a local directory or a hub id; save in the official layout.

Weights are read and written with safetensors only; a directory holding only pickle files (*.bin, *.pt, ...) is
refused. Keys are matched against the model exactly: missing keys are an error (their memory would be garbage),
unexpected keys are an error unless `strict=False`; a stored `wte` alias or CLIP `position_ids` is dropped.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from phi3v_ray.errors import CheckpointError, ConfigError
from phi3v_ray.model.configuration import Phi3VConfig
from phi3v_ray.model.modeling import Phi3VForCausalLM
from phi3v_ray.model.official_config import config_to_official_dict, load_config

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# Stored by some exports, never needed: the `wte` alias of embed_tokens, CLIP's position_ids buffer, rotary caches.
DROPPED_KEY_PATTERNS = (
    re.compile(r"^model\.vision_embed_tokens\.wte\."),
    re.compile(r"\.embeddings\.position_ids$"),
    re.compile(r"rotary_emb\.(inv_freq|original_inv_freq)$"),
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PRESETS = ("tiny", "official")
TINY_SEED = 0


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """`"bfloat16"` → torch.bfloat16; unknown names raise a ConfigError listing the choices."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"dtype is {dtype!r}; expected one of {', '.join(DTYPES)}")
    return DTYPES[dtype]


def build_model(config: Phi3VConfig, *, seed: int = TINY_SEED) -> Phi3VForCausalLM:
    """A randomly initialised model whose weights depend only on `config` and `seed` (same on every machine)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Phi3VForCausalLM(config)


def load_model(
    source: str | Path,
    *,
    dtype: str | torch.dtype = "float32",
    attention: str = "sdpa",
    tokenizer: str | Path | None = None,
) -> tuple[Phi3VForCausalLM, PreTrainedTokenizerFast]:
    """(model, tokenizer) for "tiny", "official" (random init, for dry runs), a local directory or a hub id.

    The tokenizer comes from `tokenizer` when given, else the tiny one for "tiny", else the model directory.
    """
    from phi3v_ray.model.tokenizer import load_tokenizer  # written alongside; imported late on purpose

    torch_dtype = resolve_dtype(dtype)
    source_text = str(source)
    if source_text in PRESETS:
        config = Phi3VConfig.preset(source_text)
        config.set_attention(attention)
        model = build_model(config).to(torch_dtype)
        if tokenizer is None and source_text == "official":
            raise ConfigError(
                "load_model('official') builds random weights and has no tokenizer files; pass tokenizer=<a "
                "directory holding the official tokenizer.json>"
            )
        tokenizer_source: str | Path | None = tokenizer
    else:
        model_dir = resolve_model_dir(source_text)
        model = load_pretrained(model_dir, dtype=torch_dtype, attention=attention)
        tokenizer_source = tokenizer if tokenizer is not None else model_dir
    loaded_tokenizer = load_tokenizer(tokenizer_source)
    _check_tokenizer_matches(loaded_tokenizer, model.config, source_text)
    model.eval()
    return model, loaded_tokenizer


def _check_tokenizer_matches(tokenizer: PreTrainedTokenizerFast, config: Phi3VConfig, source: str) -> None:
    """The tokenizer's `<|image|>` id and vocabulary must fit the model, or image spans would land nowhere."""
    image_id = tokenizer.convert_tokens_to_ids("<|image|>")
    if image_id != config.image_token_id:
        raise ConfigError(
            f"{source}: the tokenizer's <|image|> id is {image_id}; expected the model's image_token_id "
            f"{config.image_token_id}"
        )
    if len(tokenizer) > config.text_config.vocab_size:
        raise ConfigError(
            f"{source}: the tokenizer has {len(tokenizer)} tokens; expected at most the model's vocab_size "
            f"{config.text_config.vocab_size}"
        )


def resolve_model_dir(source: str | Path) -> Path:
    """A local model directory as is; a hub id is downloaded (config, safetensors, tokenizer files only)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    text = str(source)
    if path.exists() or text.count("/") != 1 or text.startswith((".", "/", "~")):
        raise CheckpointError(
            f"{text}: not a model directory; expected a directory with config.json or a hub id"
        )
    from huggingface_hub import snapshot_download

    try:
        downloaded = snapshot_download(
            text,
            allow_patterns=["*.json", "*.safetensors", "tokenizer.model"],
        )
    except Exception as err:  # network, auth or missing repo: one clear line for the user
        raise CheckpointError(f"{text}: could not download from the hub ({err})") from None
    return Path(downloaded)


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files holding the weights: the index's shards, or the single model.safetensors."""
    index_path = model_dir / INDEX_FILE
    if index_path.is_file():
        try:
            weight_map = json.loads(index_path.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise CheckpointError(
                f"{index_path}: unreadable index ({err}); expected a 'weight_map' object"
            ) from None
        shards = sorted({model_dir / name for name in weight_map.values()})
        absent = [shard.name for shard in shards if not shard.is_file()]
        if absent:
            raise CheckpointError(
                f"{index_path}: lists shard(s) {', '.join(absent)} that are not in {model_dir}"
            )
        return shards
    if (model_dir / SINGLE_FILE).is_file():
        return [model_dir / SINGLE_FILE]
    pickles = sorted(p.name for p in model_dir.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{model_dir}: holds only pickle weights ({', '.join(pickles)}), which are refused because loading them "
            f"can run arbitrary code; expected {SINGLE_FILE} or {INDEX_FILE} with safetensors shards"
        )
    raise CheckpointError(f"{model_dir}: no weights found; expected {SINGLE_FILE} or {INDEX_FILE} + shards")


def read_state_dict(files: list[Path], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
    """All tensors of the given safetensors files (cast to `dtype` when given), minus the dropped aliases."""
    state: dict[str, torch.Tensor] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
                if any(pattern.search(key) for pattern in DROPPED_KEY_PATTERNS):
                    continue
                tensor = handle.get_tensor(key)
                state[key] = tensor.to(dtype) if dtype is not None and tensor.is_floating_point() else tensor
    return state


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Create parameters on the meta device (no memory, no init cost) while buffers stay real.

    Non-persistent buffers (rotary frequencies, CLIP position ids, normalisation constants) are not in the
    checkpoint, so they must be computed for real at construction; only parameters come from the file.
    """
    original = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = original  # type: ignore[method-assign]


def load_pretrained(
    source: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    attention: str | None = None,
    strict: bool = True,
) -> Phi3VForCausalLM:
    """Build the model from config.json and load its safetensors weights, reporting missing/unexpected keys."""
    model_dir = resolve_model_dir(source)
    files = weight_files(model_dir)
    config = load_config(model_dir)
    if attention is not None:
        config.set_attention(attention)
    torch_dtype = resolve_dtype(dtype)
    state = read_state_dict(files, torch_dtype)
    with parameters_on_meta():
        model = Phi3VForCausalLM(config)
    result = model.load_state_dict(state, strict=False, assign=True)
    still_meta = sorted(name for name, param in model.named_parameters() if param.device.type == "meta")
    missing = sorted(set(result.missing_keys) | set(still_meta))
    if missing:
        raise CheckpointError(
            f"{model_dir}: {len(missing)} weight(s) missing from the checkpoint: {_preview(missing)}"
        )
    if result.unexpected_keys:
        message = (
            f"{model_dir}: {len(result.unexpected_keys)} unexpected weight(s) the model has no place for: "
            f"{_preview(result.unexpected_keys)}"
        )
        if strict:
            raise CheckpointError(message)
        logger.warning(message)
    if torch_dtype is not None:
        model.to(torch_dtype)
    model.eval()
    return model


def _preview(keys: list[str], limit: int = 8) -> str:
    """The first few keys of a long list, for one-line messages."""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string like "5GB" / "200KB" / "1MiB"."""
    if isinstance(size, int):
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", size, flags=re.IGNORECASE)
    if not match:
        raise ConfigError(f"max_shard_size is {size!r}; expected bytes as an int or a string like '5GB'")
    units = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
    return int(float(match.group(1)) * units[(match.group(2) or "b").lower()])


def save_pretrained(
    model: Phi3VForCausalLM,
    save_directory: str | Path,
    *,
    max_shard_size: int | str = "5GB",
    state_dict: dict[str, torch.Tensor] | None = None,
    safe_serialization: bool = True,
) -> None:
    """Official layout: config.json (official names + our extras) and model.safetensors or shards + index."""
    if not safe_serialization:
        raise CheckpointError(
            "save_pretrained(safe_serialization=False) asks for pickle; only safetensors is written"
        )
    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = state_dict if state_dict is not None else model.state_dict()
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state.items()}
    limit = parse_size(max_shard_size)
    shards: list[dict[str, torch.Tensor]] = [{}]
    shard_bytes = 0
    for key, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        if shards[-1] and shard_bytes + size > limit:
            shards.append({})
            shard_bytes = 0
        shards[-1][key] = tensor
        shard_bytes += size
    for stale in list(directory.glob("model*.safetensors")) + [directory / INDEX_FILE]:
        stale.unlink(missing_ok=True)  # a previous save with another shard count must not linger
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(directory / SINGLE_FILE), metadata=metadata)
    else:
        weight_map: dict[str, str] = {}
        for number, shard in enumerate(shards, start=1):
            name = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(directory / name), metadata=metadata)
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    dtype_name = str(next(iter(tensors.values())).dtype).removeprefix("torch.") if tensors else None
    official = config_to_official_dict(model.config, dtype=dtype_name)
    (directory / "config.json").write_text(json.dumps(official, indent=2) + "\n", encoding="utf-8")
    model.generation_config.save_pretrained(str(directory))
