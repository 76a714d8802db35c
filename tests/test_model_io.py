"""Saving and loading Phi3VForCausalLM: the official layout, safetensors only, exact key matching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from phi3v_ray.errors import CheckpointError
from phi3v_ray.model import Phi3VConfig, Phi3VForCausalLM
from phi3v_ray.model.loading import build_model, load_model

CROP = 56


@pytest.fixture(scope="module")
def model() -> Phi3VForCausalLM:
    """A tiny model whose separators are non-zero, so losing them on load would show in the logits."""
    tiny = build_model(Phi3VConfig.preset("tiny"))
    with torch.no_grad():
        tiny.model.vision_embed_tokens.glb_GN.normal_(generator=torch.Generator().manual_seed(2))
        tiny.model.vision_embed_tokens.sub_GN.normal_(generator=torch.Generator().manual_seed(3))
    return tiny.eval()


@torch.no_grad()
def logits_for(model: Phi3VForCausalLM) -> torch.Tensor:
    """Logits of a fixed prompt holding one 1×2-crop image."""
    sizes = torch.tensor([[CROP, 2 * CROP]])
    count = model.model.vision_embed_tokens.token_counts(sizes)[0]
    ids = torch.tensor([[1, 7] + [8] * count + [1, 30, 4]])
    pixels = torch.randint(
        0, 256, (1, 3, CROP, 2 * CROP), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    return model(input_ids=ids, pixel_values=pixels, image_sizes=sizes).logits


def test_tiny_model_saved_sharded_in_the_official_layout_loads_back_with_identical_logits(
    model: Phi3VForCausalLM, tmp_path: Path
) -> None:
    model.save_pretrained(tmp_path, max_shard_size="1MB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0].startswith("model-00001-of-")
    assert set(index["weight_map"]) == set(model.state_dict())
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "phi3_v" and config["rope_scaling"]["type"] == "su"
    assert {"embd_layer", "img_processor", "vision_config"} <= set(config)
    loaded = Phi3VForCausalLM.from_pretrained(tmp_path)
    torch.testing.assert_close(logits_for(loaded), logits_for(model), rtol=0, atol=0)


def test_single_file_save_holds_no_wte_alias_and_loads_back(model: Phi3VForCausalLM, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path)
    stored = load_file(tmp_path / "model.safetensors")
    assert not any(".wte." in key for key in stored)
    assert set(stored) == set(model.state_dict())
    torch.testing.assert_close(logits_for(Phi3VForCausalLM.from_pretrained(tmp_path)), logits_for(model))


def test_stored_wte_alias_and_clip_position_ids_are_dropped(model: Phi3VForCausalLM, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path)
    stored = load_file(tmp_path / "model.safetensors")
    stored["model.vision_embed_tokens.wte.weight"] = stored["model.embed_tokens.weight"].clone()
    clip = "model.vision_embed_tokens.img_processor.vision_model.embeddings"
    stored[f"{clip}.position_ids"] = torch.arange(17)[None]
    save_file(stored, str(tmp_path / "model.safetensors"))
    torch.testing.assert_close(logits_for(Phi3VForCausalLM.from_pretrained(tmp_path)), logits_for(model))


def test_missing_and_unexpected_weights_are_reported(model: Phi3VForCausalLM, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path)
    stored = load_file(tmp_path / "model.safetensors")
    del stored["model.vision_embed_tokens.glb_GN"]
    save_file(stored, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 weight\(s\) missing .*model\.vision_embed_tokens\.glb_GN"):
        Phi3VForCausalLM.from_pretrained(tmp_path)

    stored["model.vision_embed_tokens.glb_GN"] = model.model.vision_embed_tokens.glb_GN.detach().clone()
    stored["model.extra_head.weight"] = torch.zeros(2)
    save_file(stored, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"1 unexpected weight\(s\) .*model\.extra_head\.weight"):
        Phi3VForCausalLM.from_pretrained(tmp_path)


def test_pickle_only_directory_is_refused(model: Phi3VForCausalLM, tmp_path: Path) -> None:
    model.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save({"lm_head.weight": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(
        CheckpointError, match=r"holds only pickle weights \(pytorch_model\.bin\), which are refused"
    ):
        Phi3VForCausalLM.from_pretrained(tmp_path)


def test_load_model_tiny_builds_identical_weights_every_time() -> None:
    first, tokenizer = load_model("tiny")
    second, _ = load_model("tiny")
    assert tokenizer.convert_tokens_to_ids("<|image|>") == first.config.image_token_id
    for (name, a), (_, b) in zip(first.state_dict().items(), second.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert not first.training


def test_load_model_from_a_saved_directory_uses_the_requested_dtype(
    model: Phi3VForCausalLM, tmp_path: Path
) -> None:
    model.save_pretrained(tmp_path)
    from phi3v_ray.model.tokenizer import tiny_tokenizer

    tiny_tokenizer().save_pretrained(tmp_path)
    loaded, tokenizer = load_model(str(tmp_path), dtype="bfloat16", attention="eager")
    assert {param.dtype for param in loaded.parameters()} == {torch.bfloat16}
    assert loaded.config.text_config._attn_implementation == "eager"
    assert tokenizer.convert_tokens_to_ids("<|end|>") == 6
