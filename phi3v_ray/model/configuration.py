"""Phi3VConfig: the Phi-3-Vision configuration as a text config (Phi3Config) plus a vision config (CLIPVisionConfig).

This module holds the class, its presets ("official" numbers and the CPU-sized "tiny") and the attention choice.
Reading and writing config.json in the official checkpoint's field names lives in official_config.py.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

from transformers import CLIPVisionConfig, Phi3Config, PretrainedConfig

from phi3v_ray.errors import ConfigError
from phi3v_ray.model.geometry import merged_tokens_per_side

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


def clip_large_336_kwargs() -> dict[str, Any]:
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
                vision_config=CLIPVisionConfig(**clip_large_336_kwargs()),
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
        return merged_tokens_per_side(self.crop_size, self.vision_config.patch_size)

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
