"""config.json in the official Phi-3-Vision layout: read it (from a directory, a file or a hub id) and write it.

The official checkpoint's config.json uses its own field names (`embd_layer`, `img_processor`, rope type `su`);
`official_dict_to_config` / `config_to_official_dict` translate between those and Phi3VConfig, so a directory we
save can be read by anyone who reads the official layout, and the official directory loads without remote code.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from transformers import CLIPVisionConfig, Phi3Config

from phi3v_ray.errors import ConfigError
from phi3v_ray.model.configuration import (
    OFFICIAL_CLIP_NAME,
    OFFICIAL_IMAGE_TOKEN_ID,
    OFFICIAL_PAD_TOKEN_ID,
    OFFICIAL_STOP_TOKEN_IDS,
    Phi3VConfig,
    clip_large_336_kwargs,
)

# Flat text-model fields copied as they are into Phi3Config.
_TEXT_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
)
_REQUIRED_OFFICIAL_KEYS = (*_TEXT_KEYS, "rope_scaling", "embd_layer", "img_processor")


def official_dict_to_config(
    raw: dict[str, Any], *, source: str, preprocessor: dict[str, Any] | None = None
) -> Phi3VConfig:
    """Build a Phi3VConfig from the official config.json field names (plus the extras our saves add)."""
    if raw.get("model_type") != "phi3_v":
        raise ConfigError(f"{source}: model_type is {raw.get('model_type')!r}; expected 'phi3_v'")
    missing = [key for key in _REQUIRED_OFFICIAL_KEYS if key not in raw]
    if missing:
        raise ConfigError(f"{source}: missing required field(s) {', '.join(missing)}")
    text = _text_config_from_official(raw, source)
    embd_layer, img_processor = raw["embd_layer"], raw["img_processor"]
    if not isinstance(embd_layer, dict) or not isinstance(img_processor, dict):
        raise ConfigError(f"{source}: embd_layer and img_processor must be objects; found {embd_layer!r}")
    expected_embd = {"embedding_cls": "image", "projection_cls": "mlp", "use_hd_transform": True}
    for key, expected in expected_embd.items():
        if embd_layer.get(key, expected) != expected:
            raise ConfigError(f"{source}: embd_layer.{key} is {embd_layer[key]!r}; expected {expected!r}")
    if img_processor.get("type_feature", "patch") != "patch":
        raise ConfigError(
            f"{source}: img_processor.type_feature is {img_processor['type_feature']!r}; expected 'patch'"
        )
    if "image_dim_out" not in img_processor:
        raise ConfigError(f"{source}: missing required field img_processor.image_dim_out")
    if "vision_config" in raw:
        vision = CLIPVisionConfig(**_plain_vision_kwargs(raw["vision_config"]))
    elif img_processor.get("model_name", OFFICIAL_CLIP_NAME) == OFFICIAL_CLIP_NAME:
        vision = CLIPVisionConfig(**clip_large_336_kwargs())
    else:
        raise ConfigError(
            f"{source}: img_processor.model_name is {img_processor['model_name']!r} and there is no vision_config; "
            f"expected {OFFICIAL_CLIP_NAME!r}"
        )
    num_crops = raw.get("num_crops", (preprocessor or {}).get("num_crops", 16))
    try:
        config = Phi3VConfig(
            text_config=text,
            vision_config=vision,
            crop_size=raw.get("crop_size", vision.image_size),
            num_crops=num_crops,
            image_token_id=raw.get("image_token_id", OFFICIAL_IMAGE_TOKEN_ID),
            layer_idx=img_processor.get("layer_idx", -2),
            image_dim_out=img_processor["image_dim_out"],
            hd_transform_order=embd_layer.get("hd_transform_order", "sub_glb"),
        )
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    config.set_attention(raw.get("_attn_implementation"), source=f"{source} _attn_implementation")
    return config


def _text_config_from_official(raw: dict[str, Any], source: str) -> Phi3Config:
    """The official flat text fields → Phi3Config, with rope type su → longrope set explicitly (reference §1)."""
    rope_scaling = raw["rope_scaling"]
    vocab_size = raw["vocab_size"]
    has_phi3_specials = vocab_size >= 32064
    eos = raw.get("eos_token_id", 2)
    if isinstance(eos, int) and has_phi3_specials:
        eos = [token for token in OFFICIAL_STOP_TOKEN_IDS if token != eos] + [eos]
    kwargs: dict[str, Any] = {key: raw[key] for key in _TEXT_KEYS}
    kwargs.update(
        num_key_value_heads=raw.get("num_key_value_heads", raw["num_attention_heads"]),
        hidden_act=raw.get("hidden_act", "silu"),
        rms_norm_eps=raw.get("rms_norm_eps", 1e-5),
        sliding_window=raw.get("sliding_window"),
        attention_dropout=raw.get("attention_dropout", 0.0),
        embd_pdrop=raw.get("embd_pdrop", 0.0),
        resid_pdrop=raw.get("resid_pdrop", 0.0),
        initializer_range=raw.get("initializer_range", 0.02),
        tie_word_embeddings=raw.get("tie_word_embeddings", False),
        bos_token_id=raw.get("bos_token_id", 1),
        eos_token_id=eos,
        pad_token_id=raw.get("pad_token_id", OFFICIAL_PAD_TOKEN_ID if has_phi3_specials else None),
        use_cache=raw.get("use_cache", True),
    )
    rope_theta = raw.get("rope_theta", 10000.0)
    if rope_scaling is None:
        kwargs["rope_parameters"] = {"rope_type": "default", "rope_theta": rope_theta}
    else:
        rope_type = rope_scaling.get("type", rope_scaling.get("rope_type"))
        if rope_type not in ("su", "longrope"):
            raise ConfigError(f"{source}: rope_scaling.type is {rope_type!r}; expected 'su' or 'longrope'")
        missing = [key for key in ("long_factor", "short_factor") if key not in rope_scaling]
        original = raw.get(
            "original_max_position_embeddings", rope_scaling.get("original_max_position_embeddings")
        )
        if original is None:
            missing.append("original_max_position_embeddings")
        if missing:
            raise ConfigError(
                f"{source}: missing required field(s) {', '.join(missing)} for rope_scaling {rope_type}"
            )
        kwargs["original_max_position_embeddings"] = original
        kwargs["rope_parameters"] = {
            "rope_type": "longrope",
            "rope_theta": rope_theta,
            # the ratio longrope derives anyway; stating it keeps transformers from warning on every build
            "factor": raw["max_position_embeddings"] / original,
            "long_factor": list(rope_scaling["long_factor"]),
            "short_factor": list(rope_scaling["short_factor"]),
        }
    try:
        return Phi3Config(**kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{source}: invalid text settings: {err}") from None


_VISION_KEYS = tuple(clip_large_336_kwargs())


def _plain_vision_kwargs(raw: Any) -> dict[str, Any]:
    """Keep only the CLIPVisionConfig fields we write, so unrelated bookkeeping keys never leak in."""
    if not isinstance(raw, dict):
        raise ConfigError(f"vision_config must be an object; found {type(raw).__name__}")
    return {key: raw[key] for key in _VISION_KEYS if key in raw}


def config_to_official_dict(config: Phi3VConfig, *, dtype: str | None = None) -> dict[str, Any]:
    """The official config.json layout for `config`, plus `vision_config`/`crop_size`/`num_crops`/`image_token_id`."""
    text = config.text_config
    rope = text.rope_parameters
    official: dict[str, Any] = {
        "architectures": ["Phi3VForCausalLM"],
        "model_type": "phi3_v",
        "attention_dropout": text.attention_dropout,
        "bos_token_id": text.bos_token_id,
        "eos_token_id": text.eos_token_id,
        "pad_token_id": text.pad_token_id,
        "embd_layer": {
            "embedding_cls": "image",
            "hd_transform_order": config.hd_transform_order,
            "projection_cls": "mlp",
            "use_hd_transform": True,
            "with_learnable_separator": True,
        },
        "embd_pdrop": text.embd_pdrop,
        "resid_pdrop": text.resid_pdrop,
        "hidden_act": text.hidden_act,
        "hidden_size": text.hidden_size,
        "img_processor": {
            "image_dim_out": config.image_dim_out,
            "model_name": OFFICIAL_CLIP_NAME,
            "name": "clip_vision_model",
            "num_img_tokens": config.merged_tokens_per_side**2,
            "layer_idx": config.layer_idx,
            "type_feature": "patch",
        },
        "initializer_range": text.initializer_range,
        "intermediate_size": text.intermediate_size,
        "max_position_embeddings": text.max_position_embeddings,
        "num_attention_heads": text.num_attention_heads,
        "num_hidden_layers": text.num_hidden_layers,
        "num_key_value_heads": text.num_key_value_heads,
        "rms_norm_eps": text.rms_norm_eps,
        "rope_theta": rope["rope_theta"],
        "sliding_window": text.sliding_window,
        "tie_word_embeddings": False,
        "torch_dtype": dtype or "float32",
        "use_cache": text.use_cache,
        "vocab_size": text.vocab_size,
        "vision_config": {key: getattr(config.vision_config, key) for key in _VISION_KEYS},
        "crop_size": config.crop_size,
        "num_crops": config.num_crops,
        "image_token_id": config.image_token_id,
    }
    if rope["rope_type"] == "longrope":
        official["original_max_position_embeddings"] = rope["original_max_position_embeddings"]
        official["rope_scaling"] = {
            "long_factor": list(rope["long_factor"]),
            "short_factor": list(rope["short_factor"]),
            "type": "su",
        }
    else:
        official["rope_scaling"] = None
    return official


def load_config(path_or_hub_id: str | Path) -> Phi3VConfig:
    """Read a Phi-3-Vision config.json from a directory, a file, or a hub repo id (config.json only)."""
    config_path, preprocessor_path = _locate_config(str(path_or_hub_id))
    raw = _read_json(config_path)
    preprocessor = _read_json(preprocessor_path) if preprocessor_path is not None else None
    if "text_config" in raw:  # written by Phi3VConfig.save_pretrained (transformers' own layout)
        if raw.get("model_type") != "phi3_v":
            raise ConfigError(f"{config_path}: model_type is {raw.get('model_type')!r}; expected 'phi3_v'")
        fields = {key: value for key, value in raw.items() if key != "model_type"}
        return Phi3VConfig(**fields)
    return official_dict_to_config(raw, source=str(config_path), preprocessor=preprocessor)


def _locate_config(source: str) -> tuple[Path, Path | None]:
    """config.json (and preprocessor_config.json when present) for a local path or a hub id."""
    path = Path(source).expanduser()
    if path.is_file():
        sibling = path.parent / "preprocessor_config.json"
        return path, sibling if sibling.is_file() else None
    if path.is_dir():
        config_path = path / "config.json"
        if not config_path.is_file():
            raise ConfigError(
                f"{path}: no config.json in this directory; expected a Phi-3-Vision model directory"
            )
        sibling = path / "preprocessor_config.json"
        return config_path, sibling if sibling.is_file() else None
    if source.count("/") == 1 and not source.startswith((".", "/", "~")):
        return _download_hub_config(source)
    raise ConfigError(
        f"{source}: no such file or directory; expected a model directory, config.json or hub id"
    )


def _download_hub_config(repo_id: str) -> tuple[Path, Path | None]:
    """Fetch config.json (and preprocessor_config.json if the repo has one) from the Hugging Face Hub."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        config_path = Path(hf_hub_download(repo_id, "config.json"))
    except Exception as err:  # network, auth or missing repo: one clear line for the user
        raise ConfigError(f"{repo_id}: could not download config.json from the hub ({err})") from None
    try:
        preprocessor_path: Path | None = Path(hf_hub_download(repo_id, "preprocessor_config.json"))
    except EntryNotFoundError:
        preprocessor_path = None
    return config_path, preprocessor_path


def _read_json(path: Path) -> dict[str, Any]:
    """Parse a JSON object, turning syntax errors into a ConfigError that names the file."""
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a JSON object; found {type(loaded).__name__}")
    return copy.deepcopy(loaded)
