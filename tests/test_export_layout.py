"""The export's tensor names and shapes are the official checkpoint's (reference §6), for the official config:
on the meta device for the full 4.2B model, and for real on a small model with the official CLIP tower.

The expected names are written out here from the reference's key list, not derived from our model, so a rename in
the model or a leftover from the merge shows up as a difference.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from phi3v_ray.cli import main
from phi3v_ray.config import FinetuneSection, ModelSection

from support.export_checkpoints import make_rich_lora_checkpoint, save_official_vision_base

PROJ = "model.vision_embed_tokens"
CLIP = f"{PROJ}.img_processor.vision_model"


def official_text_shapes(layers: int, hidden: int, intermediate: int, vocab: int) -> dict[str, tuple]:
    """Language-model tensors of the official layout (reference §6) for the given sizes."""
    shapes = {
        "model.embed_tokens.weight": (vocab, hidden),
        "model.norm.weight": (hidden,),
        "lm_head.weight": (vocab, hidden),
    }
    for n in range(layers):
        prefix = f"model.layers.{n}"
        shapes[f"{prefix}.input_layernorm.weight"] = (hidden,)
        shapes[f"{prefix}.self_attn.qkv_proj.weight"] = (3 * hidden, hidden)
        shapes[f"{prefix}.self_attn.o_proj.weight"] = (hidden, hidden)
        shapes[f"{prefix}.post_attention_layernorm.weight"] = (hidden,)
        shapes[f"{prefix}.mlp.gate_up_proj.weight"] = (2 * intermediate, hidden)
        shapes[f"{prefix}.mlp.down_proj.weight"] = (hidden, intermediate)
    return shapes


def official_vision_shapes(text_hidden: int) -> dict[str, tuple]:
    """CLIP ViT-L/14-336 tower, separators and projector of the official layout (reference §6)."""
    shapes = {
        f"{PROJ}.glb_GN": (1, 1, 4096),
        f"{PROJ}.sub_GN": (1, 1, 1, 4096),
        f"{PROJ}.img_projection.0.weight": (text_hidden, 4096),
        f"{PROJ}.img_projection.0.bias": (text_hidden,),
        f"{PROJ}.img_projection.2.weight": (text_hidden, text_hidden),
        f"{PROJ}.img_projection.2.bias": (text_hidden,),
        f"{CLIP}.embeddings.class_embedding": (1024,),
        f"{CLIP}.embeddings.patch_embedding.weight": (1024, 3, 14, 14),
        f"{CLIP}.embeddings.position_embedding.weight": (577, 1024),
    }
    for norm in ("pre_layrnorm", "post_layernorm"):
        shapes[f"{CLIP}.{norm}.weight"] = shapes[f"{CLIP}.{norm}.bias"] = (1024,)
    for i in range(24):
        layer = f"{CLIP}.encoder.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{layer}.self_attn.{proj}.weight"] = (1024, 1024)
            shapes[f"{layer}.self_attn.{proj}.bias"] = (1024,)
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[f"{layer}.{norm}.weight"] = shapes[f"{layer}.{norm}.bias"] = (1024,)
        shapes[f"{layer}.mlp.fc1.weight"], shapes[f"{layer}.mlp.fc1.bias"] = (4096, 1024), (4096,)
        shapes[f"{layer}.mlp.fc2.weight"], shapes[f"{layer}.mlp.fc2.bias"] = (1024, 4096), (1024,)
    return shapes


def test_full_size_merge_on_the_meta_device_has_the_official_names_and_shapes() -> None:
    from peft.utils import get_peft_model_state_dict

    from phi3v_ray.export.adapter import adapter_from_tensors
    from phi3v_ray.export.base_weights import BaseWeights
    from phi3v_ray.export.merge import merged_stream
    from phi3v_ray.model.configuration import Phi3VConfig
    from phi3v_ray.model.modeling import Phi3VForCausalLM
    from phi3v_ray.train.trainable import apply_training_mode

    config = Phi3VConfig.preset("official")
    with torch.device("meta"):
        model = Phi3VForCausalLM(config)
        base = BaseWeights(config, None, {}, dict(model.state_dict()))
        finetune = FinetuneSection(rank=8, alpha=16, dropout=0.0, vision="lora")
        peft_model = apply_training_mode(model, finetune)
        saved = get_peft_model_state_dict(peft_model)
    adapter = adapter_from_tensors(saved, {"r": 8, "lora_alpha": 16}, Path("meta-adapter"))
    assert len(adapter.pairs) == 32 * 4 + 24 * 6 and len(adapter.replacements) == 4
    exported = {name: tuple(t.shape) for name, t in merged_stream(base.tensors(), adapter, torch.bfloat16)}
    expected = official_text_shapes(32, 3072, 8192, 32064) | official_vision_shapes(3072)
    assert exported == expected
    assert sum(torch.Size(shape).numel() for shape in exported.values()) == 4_146_621_440  # reference §6


def test_small_model_with_the_official_vision_tower_exports_official_names_for_real(tmp_path: Path) -> None:
    base_dir = save_official_vision_base(tmp_path / "base")
    base = ModelSection(path=str(base_dir), dtype="bfloat16", num_crops=4)
    checkpoint = make_rich_lora_checkpoint(tmp_path / "sweep" / "trial" / "checkpoint_000001", base=base)
    out = tmp_path / "export"
    assert (
        main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--max-shard-size", "300MB"]) == 0
    )
    index = json.loads((out / "model.safetensors.index.json").read_text())
    stored: dict[str, tuple] = {}
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(str(out / shard), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118
                sliced = handle.get_slice(key)
                stored[key] = tuple(sliced.get_shape())
                assert sliced.get_dtype() == "BF16", key
    from phi3v_ray.model.configuration import _tiny_text_kwargs

    tiny = _tiny_text_kwargs()
    expected = official_text_shapes(
        tiny["num_hidden_layers"], tiny["hidden_size"], tiny["intermediate_size"], tiny["vocab_size"]
    ) | official_vision_shapes(tiny["hidden_size"])
    assert stored == expected
    assert len(set(index["weight_map"].values())) >= 2
    config = json.loads((out / "config.json").read_text())
    assert config["img_processor"]["model_name"] == "openai/clip-vit-large-patch14-336"
    assert config["img_processor"]["num_img_tokens"] == 144
