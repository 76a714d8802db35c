"""Phi3VConfig presets, the official config.json mapping, and the full-size model's state-dict contract."""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from phi3v_ray.errors import ConfigError
from phi3v_ray.model import Phi3VConfig, Phi3VForCausalLM, load_config
from phi3v_ray.model.official_config import config_to_official_dict


def _official_expected_shapes() -> dict[str, tuple[int, ...]]:
    """The checkpoint's keys and shapes as listed in the architecture reference §6 (592 tensors)."""
    expected: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (32064, 3072),
        "model.norm.weight": (3072,),
        "lm_head.weight": (32064, 3072),
        "model.vision_embed_tokens.glb_GN": (1, 1, 4096),
        "model.vision_embed_tokens.sub_GN": (1, 1, 1, 4096),
        "model.vision_embed_tokens.img_projection.0.weight": (3072, 4096),
        "model.vision_embed_tokens.img_projection.0.bias": (3072,),
        "model.vision_embed_tokens.img_projection.2.weight": (3072, 3072),
        "model.vision_embed_tokens.img_projection.2.bias": (3072,),
    }
    for n in range(32):
        layer = f"model.layers.{n}"
        expected[f"{layer}.input_layernorm.weight"] = (3072,)
        expected[f"{layer}.self_attn.qkv_proj.weight"] = (9216, 3072)
        expected[f"{layer}.self_attn.o_proj.weight"] = (3072, 3072)
        expected[f"{layer}.post_attention_layernorm.weight"] = (3072,)
        expected[f"{layer}.mlp.gate_up_proj.weight"] = (16384, 3072)
        expected[f"{layer}.mlp.down_proj.weight"] = (3072, 8192)
    clip = "model.vision_embed_tokens.img_processor.vision_model"
    expected[f"{clip}.embeddings.class_embedding"] = (1024,)
    expected[f"{clip}.embeddings.patch_embedding.weight"] = (1024, 3, 14, 14)
    expected[f"{clip}.embeddings.position_embedding.weight"] = (577, 1024)
    for norm in ("pre_layrnorm", "post_layernorm"):
        expected[f"{clip}.{norm}.weight"] = (1024,)
        expected[f"{clip}.{norm}.bias"] = (1024,)
    for i in range(24):
        layer = f"{clip}.encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            expected[f"{layer}.self_attn.{proj}.weight"] = (1024, 1024)
            expected[f"{layer}.self_attn.{proj}.bias"] = (1024,)
        for norm in ("layer_norm1", "layer_norm2"):
            expected[f"{layer}.{norm}.weight"] = (1024,)
            expected[f"{layer}.{norm}.bias"] = (1024,)
        expected[f"{layer}.mlp.fc1.weight"] = (4096, 1024)
        expected[f"{layer}.mlp.fc1.bias"] = (4096,)
        expected[f"{layer}.mlp.fc2.weight"] = (1024, 4096)
        expected[f"{layer}.mlp.fc2.bias"] = (1024,)
    return expected


def test_full_size_model_has_exactly_the_official_keys_shapes_and_parameter_count() -> None:
    with torch.device("meta"):
        model = Phi3VForCausalLM(Phi3VConfig.preset("official"))
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    expected = _official_expected_shapes()
    assert len(expected) == 592
    assert sorted(set(shapes) - set(expected)) == []
    assert sorted(set(expected) - set(shapes)) == []
    assert shapes == expected
    assert sum(param.numel() for param in model.parameters()) == 4_146_621_440


def test_load_config_reads_the_official_config_json(official_files: Path) -> None:
    raw = json.loads((official_files / "config.json").read_text())
    config = load_config(official_files)
    text, vision = config.text_config, config.vision_config
    assert (text.vocab_size, text.hidden_size, text.intermediate_size) == (32064, 3072, 8192)
    assert (text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (32, 32, 32)
    assert text.max_position_embeddings == 131072
    rope = text.rope_parameters
    assert rope["rope_type"] == "longrope"
    assert rope["original_max_position_embeddings"] == 4096
    assert rope["long_factor"] == raw["rope_scaling"]["long_factor"]
    assert rope["short_factor"] == raw["rope_scaling"]["short_factor"]
    assert len(rope["long_factor"]) == 48
    assert (vision.hidden_size, vision.num_hidden_layers, vision.image_size, vision.patch_size) == (
        1024,
        24,
        336,
        14,
    )
    assert vision.hidden_act == "quick_gelu"
    assert (config.crop_size, config.num_crops, config.layer_idx, config.image_dim_out) == (336, 16, -2, 1024)
    assert config.image_token_id == 32044
    assert config.stop_token_ids == [32007, 32000, 2]


def test_official_longrope_scales_cos_sin_by_1_19024(official_files: Path) -> None:
    text = load_config(official_files).text_config
    _, attention_factor = ROPE_INIT_FUNCTIONS["longrope"](text)
    assert attention_factor == pytest.approx(1.19024, abs=1e-5)


def test_official_preset_equals_the_official_config_json(official_files: Path) -> None:
    from_file, preset = load_config(official_files), Phi3VConfig.preset("official")
    assert from_file.text_config.to_dict() == preset.text_config.to_dict()
    assert from_file.vision_config.to_dict() == preset.vision_config.to_dict()
    assert from_file.to_dict() == preset.to_dict()


def test_flash_attention_in_official_config_falls_back_to_sdpa_with_a_warning(
    official_files: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash_attn is installed here, so there is no fallback to observe")
    with caplog.at_level(logging.WARNING):
        config = load_config(official_files)
    assert config._attn_implementation == "sdpa"
    assert config.text_config._attn_implementation == "sdpa"
    assert "flash_attn is not installed" in caplog.text


def test_config_missing_fields_is_refused_naming_them(tmp_path: Path, official_files: Path) -> None:
    raw = json.loads((official_files / "config.json").read_text())
    del raw["hidden_size"], raw["img_processor"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(
        ConfigError, match=r"config\.json: missing required field\(s\) hidden_size, img_processor"
    ):
        load_config(tmp_path)


def test_config_of_another_model_type_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 8}))
    with pytest.raises(ConfigError, match="model_type is 'llama'; expected 'phi3_v'"):
        load_config(tmp_path)


def test_num_crops_below_one_is_refused() -> None:
    tiny = Phi3VConfig.preset("tiny")
    with pytest.raises(ConfigError, match="num_crops is 0; expected an integer >= 1"):
        Phi3VConfig(
            text_config=tiny.text_config, vision_config=tiny.vision_config, num_crops=0, image_token_id=8
        )


def test_tiny_config_round_trips_through_the_official_layout(tmp_path: Path) -> None:
    tiny = Phi3VConfig.preset("tiny")
    official = config_to_official_dict(tiny)
    assert official["rope_scaling"]["type"] == "su"
    assert official["model_type"] == "phi3_v" and "embd_layer" in official and "img_processor" in official
    (tmp_path / "config.json").write_text(json.dumps(official))
    loaded = load_config(tmp_path / "config.json")
    assert loaded.text_config.to_dict() == tiny.text_config.to_dict()
    assert loaded.vision_config.to_dict() == tiny.vision_config.to_dict()
    assert (loaded.num_crops, loaded.crop_size, loaded.image_token_id) == (4, 56, 8)


def test_tiny_preset_numbers() -> None:
    tiny = Phi3VConfig.preset("tiny")
    text, vision = tiny.text_config, tiny.vision_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads, text.num_key_value_heads) == (
        128,
        2,
        4,
        4,
    )
    assert (text.intermediate_size, text.vocab_size, text.max_position_embeddings) == (256, 1024, 8192)
    assert text.rope_parameters["original_max_position_embeddings"] == 2048
    assert len(text.rope_parameters["long_factor"]) == len(text.rope_parameters["short_factor"]) == 16
    assert (vision.hidden_size, vision.num_hidden_layers, vision.image_size, vision.patch_size) == (
        64,
        2,
        56,
        14,
    )
    assert tiny.merged_tokens_per_side == 2
    assert (text.pad_token_id, text.bos_token_id, tiny.stop_token_ids, tiny.image_token_id) == (
        3,
        1,
        [6, 3, 2],
        8,
    )


def test_config_saved_in_transformers_layout_loads_back(tmp_path: Path) -> None:
    tiny = Phi3VConfig.preset("tiny")
    tiny.save_pretrained(tmp_path)
    loaded = load_config(tmp_path)
    assert loaded.text_config.to_dict() == tiny.text_config.to_dict()
    assert loaded.vision_config.to_dict() == tiny.vision_config.to_dict()
    assert (loaded.num_crops, loaded.image_token_id) == (4, 8)
