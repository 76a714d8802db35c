"""Phi3VConfig: the Phi-3-Vision configuration as a text config (Phi3Config) plus a vision config (CLIPVisionConfig).

The official checkpoint's config.json uses its own field names (`embd_layer`, `img_processor`, rope type `su`);
`official_dict_to_config` / `config_to_official_dict` translate between those and this class, so a directory we
save can be read by anyone who reads the official layout, and the official directory loads without remote code.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
from pathlib import Path
from typing import Any

from transformers import CLIPVisionConfig, Phi3Config, PretrainedConfig

from phi3v_ray.errors import ConfigError

logger = logging.getLogger(__name__)

# Copied programmatically from the official config.json (float32 reprs kept exactly; see the reference §1).
_OFFICIAL_LONG_FACTOR: tuple[float, ...] = (
    1.0299999713897705,
    1.0499999523162842,
    1.0499999523162842,
    1.0799999237060547,
    1.2299998998641968,
    1.2299998998641968,
    1.2999999523162842,
    1.4499999284744263,
    1.5999999046325684,
    1.6499998569488525,
    1.8999998569488525,
    2.859999895095825,
    3.68999981880188,
    5.419999599456787,
    5.489999771118164,
    5.489999771118164,
    9.09000015258789,
    11.579999923706055,
    15.65999984741211,
    15.769999504089355,
    15.789999961853027,
    18.360000610351562,
    21.989999771118164,
    23.079999923706055,
    30.009998321533203,
    32.35000228881836,
    32.590003967285156,
    35.56000518798828,
    39.95000457763672,
    53.840003967285156,
    56.20000457763672,
    57.95000457763672,
    59.29000473022461,
    59.77000427246094,
    59.920005798339844,
    61.190006256103516,
    61.96000671386719,
    62.50000762939453,
    63.3700065612793,
    63.48000717163086,
    63.48000717163086,
    63.66000747680664,
    63.850006103515625,
    64.08000946044922,
    64.760009765625,
    64.80001068115234,
    64.81001281738281,
    64.81001281738281,
)
_OFFICIAL_SHORT_FACTOR: tuple[float, ...] = (
    1.05,
    1.05,
    1.05,
    1.1,
    1.1,
    1.1,
    1.2500000000000002,
    1.2500000000000002,
    1.4000000000000004,
    1.4500000000000004,
    1.5500000000000005,
    1.8500000000000008,
    1.9000000000000008,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.000000000000001,
    2.1000000000000005,
    2.1000000000000005,
    2.2,
    2.3499999999999996,
    2.3499999999999996,
    2.3499999999999996,
    2.3499999999999996,
    2.3999999999999995,
    2.3999999999999995,
    2.6499999999999986,
    2.6999999999999984,
    2.8999999999999977,
    2.9499999999999975,
    3.049999999999997,
    3.049999999999997,
    3.049999999999997,
)

OFFICIAL_IMAGE_TOKEN_ID = 32044  # `<|image|>` in the official tokenizer
# The official config says eos 2, but the model ends its turns with `<|end|>`: stop on all three (reference §5).
OFFICIAL_STOP_TOKEN_IDS = (32007, 32000, 2)
OFFICIAL_PAD_TOKEN_ID = 32000
OFFICIAL_CLIP_NAME = "openai/clip-vit-large-patch14-336"
SUPPORTED_ATTENTION = ("eager", "sdpa", "flash_attention_2")


def _official_text_kwargs() -> dict[str, Any]:
    """Phi3Config arguments of Phi-3-Vision-128K's language model (numbers from the official config.json)."""
    return {
        "vocab_size": 32064,
        "hidden_size": 3072,
        "intermediate_size": 8192,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 131072,
        "original_max_position_embeddings": 4096,
        "rope_parameters": {
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "factor": 131072 / 4096,
            "long_factor": list(_OFFICIAL_LONG_FACTOR),
            "short_factor": list(_OFFICIAL_SHORT_FACTOR),
        },
        "sliding_window": 131072,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": list(OFFICIAL_STOP_TOKEN_IDS),
        "pad_token_id": OFFICIAL_PAD_TOKEN_ID,
        "use_cache": True,
    }


def _clip_large_336_kwargs() -> dict[str, Any]:
    """CLIP ViT-L/14-336 vision tower as hard-coded by the official model (reference §2)."""
    return {
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "image_size": 336,
        "patch_size": 14,
        "num_channels": 3,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": 768,
        "attention_dropout": 0.0,
    }


def _tiny_text_kwargs() -> dict[str, Any]:
    """A 2-layer Phi-3 with the same structure (longrope, fused qkv/gate_up), small enough for CPU tests."""
    head_dim = 128 // 4
    half = head_dim // 2
    return {
        "vocab_size": 1024,
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 4,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 8192,
        "original_max_position_embeddings": 2048,
        "rope_parameters": {
            "rope_type": "longrope",
            "rope_theta": 10000.0,
            "factor": 8192 / 2048,
            "long_factor": [1.0 + 0.25 * i for i in range(half)],
            "short_factor": [1.0 + 0.05 * i for i in range(half)],
        },
        "sliding_window": None,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": [6, 3, 2],  # `<|end|>`, `<|endoftext|>`, `</s>` of the tiny tokenizer
        "pad_token_id": 3,
        "use_cache": True,
    }


def _tiny_vision_kwargs() -> dict[str, Any]:
    """A 2-layer CLIP on 56-pixel crops: 4×4 patches, so 2×2 merged tokens per crop."""
    return {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 56,
        "patch_size": 14,
        "num_channels": 3,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "projection_dim": 32,
        "attention_dropout": 0.0,
    }


class Phi3VConfig(PretrainedConfig):
    """Phi-3-Vision: a Phi-3 language model fed CLIP crop features through a 2×2-merge MLP projector.

    `text_config` is a transformers `Phi3Config` (longrope), `vision_config` a `CLIPVisionConfig`; the other fields
    describe how images become embeddings (crop size and budget, the placeholder token, the CLIP layer used).
    """

    model_type = "phi3_v"
    sub_configs_defaults = {"text_config": Phi3Config, "vision_config": CLIPVisionConfig}

    text_config: dict | PretrainedConfig | None = None
    vision_config: dict | PretrainedConfig | None = None
    crop_size: int | None = None
    num_crops: int = 16
    image_token_id: int = OFFICIAL_IMAGE_TOKEN_ID
    layer_idx: int = -2
    image_dim_out: int | None = None
    hd_transform_order: str = "sub_glb"
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        vision = self.vision_config
        if self.crop_size is None:
            self.crop_size = vision.image_size
        if self.image_dim_out is None:
            self.image_dim_out = vision.hidden_size
        self._validate()

    def _validate(self) -> None:
        """Reject settings the image path cannot honour, naming the key, what was found and what was expected."""
        vision = self.vision_config
        if not isinstance(self.num_crops, int) or self.num_crops < 1:
            raise ConfigError(f"Phi3VConfig.num_crops is {self.num_crops!r}; expected an integer >= 1")
        if self.crop_size != vision.image_size:
            raise ConfigError(
                f"Phi3VConfig.crop_size is {self.crop_size}; expected the vision tower's image_size {vision.image_size}"
            )
        side = self.crop_size // vision.patch_size
        if self.crop_size % vision.patch_size or side % 2:
            raise ConfigError(
                f"Phi3VConfig.crop_size {self.crop_size} with patch_size {vision.patch_size} gives a {side}-patch "
                "side; expected an even whole number of patches per side (the 2x2 merge needs it)"
            )
        if self.image_dim_out != vision.hidden_size:
            raise ConfigError(
                f"Phi3VConfig.image_dim_out is {self.image_dim_out}; expected vision hidden_size {vision.hidden_size}"
            )
        if self.hd_transform_order != "sub_glb":
            raise ConfigError(
                f"Phi3VConfig.hd_transform_order is {self.hd_transform_order!r}; expected 'sub_glb'"
            )
        layers = vision.num_hidden_layers
        if not -(layers + 1) <= self.layer_idx <= layers or self.layer_idx == 0:
            raise ConfigError(
                f"Phi3VConfig.layer_idx is {self.layer_idx}; expected a CLIP hidden-state index in "
                f"[-{layers + 1}, {layers}] other than 0"
            )
        if not 0 <= self.image_token_id < self.text_config.vocab_size:
            raise ConfigError(
                f"Phi3VConfig.image_token_id is {self.image_token_id}; expected an id below vocab_size "
                f"{self.text_config.vocab_size}"
            )

    @classmethod
    def preset(cls, name: str) -> Phi3VConfig:
        """`official`: Phi-3-Vision-128K-Instruct (4.15B); `tiny`: the same architecture with small numbers."""
        if name == "official":
            return cls(
                text_config=Phi3Config(**_official_text_kwargs()),
                vision_config=CLIPVisionConfig(**_clip_large_336_kwargs()),
                num_crops=16,
                image_token_id=OFFICIAL_IMAGE_TOKEN_ID,
            )
        if name == "tiny":
            return cls(
                text_config=Phi3Config(**_tiny_text_kwargs()),
                vision_config=CLIPVisionConfig(**_tiny_vision_kwargs()),
                num_crops=4,
                image_token_id=8,
            )
        raise ConfigError(f"Phi3VConfig.preset name is {name!r}; expected 'official' or 'tiny'")

    @property
    def merged_tokens_per_side(self) -> int:
        """Tokens per crop side after the 2×2 merge (12 for CLIP-L/14-336, 2 for tiny)."""
        return self.crop_size // self.vision_config.patch_size // 2

    @property
    def stop_token_ids(self) -> list[int]:
        """Token ids that end generation (`<|end|>`, `<|endoftext|>`, `</s>`)."""
        eos = self.text_config.eos_token_id
        return list(eos) if isinstance(eos, (list, tuple)) else [eos]

    def clip_layers_used(self) -> int:
        """How many CLIP encoder layers run: hidden_states[layer_idx] needs only the layers before it."""
        return self.layer_idx % (self.vision_config.num_hidden_layers + 1)

    def set_attention(self, attention: str | None, *, source: str = "attention") -> None:
        """Choose the attention kernel for text and vision; flash_attention_2 falls back to sdpa when not installed."""
        self._attn_implementation = resolve_attention(attention or "sdpa", source=source)


def resolve_attention(requested: str, *, source: str) -> str:
    """Map a requested attention kernel to one that can run here (flash-attn absent → sdpa, with a warning)."""
    if requested not in SUPPORTED_ATTENTION:
        raise ConfigError(f"{source} is {requested!r}; expected one of {', '.join(SUPPORTED_ATTENTION)}")
    if requested == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        logger.warning("%s asks for flash_attention_2 but flash_attn is not installed; using sdpa", source)
        return "sdpa"
    return requested


_REQUIRED_OFFICIAL_KEYS = (
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "max_position_embeddings",
    "rope_scaling",
    "embd_layer",
    "img_processor",
)


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
        vision = CLIPVisionConfig(**_clip_large_336_kwargs())
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
    kwargs: dict[str, Any] = {
        key: raw[key]
        for key in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "max_position_embeddings",
        )
    }
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


_VISION_KEYS = tuple(_clip_large_336_kwargs())


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
