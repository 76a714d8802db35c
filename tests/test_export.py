"""`phi3v-ray export` merges what a checkpoint trained into the official layout, and the result behaves like the
checkpoint: same logits, same greedy answers, official tensor names, loadable by from_pretrained and peft.

The LoRA checkpoint trains language LoRA, vision-tower LoRA and the projector, all with random non-zero values, so
a merge that drops any of them changes the logits on an image prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from phi3v_ray.checkpoint import load_trained_model
from phi3v_ray.cli import main
from phi3v_ray.config import ModelSection
from phi3v_ray.model.modeling import Phi3VForCausalLM

from support.export_checkpoints import make_full_checkpoint, make_rich_lora_checkpoint
from support.synthetic_checkpoints import PRODUCTS, prepared_rows

NUM_CROPS = 2  # not the tiny preset's 4: the export must keep what the checkpoint trained with
PEFT_LEFTOVERS = ("lora_", "base_model.", "modules_to_save", "base_layer")


@pytest.fixture(scope="module")
def lora_checkpoint(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export_lora")
    base = ModelSection(preset="tiny", num_crops=NUM_CROPS)
    return make_rich_lora_checkpoint(root / "sweep" / "trial_a" / "checkpoint_000007", base=base)


@pytest.fixture(scope="module")
def merged(lora_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("merged") / "export"
    code = main(
        ["export", "--checkpoint", str(lora_checkpoint), "--out", str(out), "--dtype", "float32"]
        + ["--max-shard-size", "1MB"]
    )
    assert code == 0
    return out


@pytest.fixture(scope="module")
def image_batch():
    from phi3v_ray.model.configuration import Phi3VConfig
    from phi3v_ray.model.processing import Phi3VProcessor
    from phi3v_ray.model.tokenizer import tiny_tokenizer

    config = Phi3VConfig.preset("tiny")
    config.num_crops = NUM_CROPS
    processor = Phi3VProcessor.from_config(config, tiny_tokenizer())
    return processor.collate(prepared_rows(processor, PRODUCTS[:2], with_answer=True), padding_side="right")


def _logits(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()


def _stored(directory: Path) -> dict[str, torch.Tensor]:
    index = json.loads((directory / "model.safetensors.index.json").read_text())
    tensors = {}
    for shard in sorted(set(index["weight_map"].values())):
        with safe_open(str(directory / shard), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118
                tensors[key] = handle.get_tensor(key)
    return tensors


def test_merged_export_gives_the_logits_of_base_plus_adapter(lora_checkpoint, merged, image_batch) -> None:
    from phi3v_ray.model.loading import load_model

    expected = _logits(load_trained_model(lora_checkpoint), image_batch)
    exported = _logits(Phi3VForCausalLM.from_pretrained(merged), image_batch)
    base = _logits(load_model("tiny")[0], image_batch)
    assert (expected - base).abs().max() > 1e-2  # the adapter matters, so equality below means it was merged
    torch.testing.assert_close(exported, expected, atol=1e-4, rtol=1e-4)


def test_merge_covers_vision_lora_and_the_projector(lora_checkpoint, merged) -> None:
    peft_model = load_trained_model(lora_checkpoint)
    stored = _stored(merged)
    projector = "model.vision_embed_tokens.img_projection.0.weight"
    trained_projector = (
        peft_model.get_submodule("base_model.model.model.vision_embed_tokens.img_projection.0")
        .modules_to_save["default"]
        .weight
    )
    torch.testing.assert_close(stored[projector], trained_projector.detach())
    vision_q = "model.vision_embed_tokens.img_processor.vision_model.encoder.layers.0.self_attn.q_proj.weight"
    peft_model.merge_and_unload()
    merged_model = peft_model.get_base_model()
    torch.testing.assert_close(stored[vision_q], merged_model.state_dict()[vision_q], atol=1e-6, rtol=0)


def test_export_is_the_official_layout_without_peft_leftovers(merged) -> None:
    index = json.loads((merged / "model.safetensors.index.json").read_text())
    names = set(index["weight_map"])
    reference = Phi3VForCausalLM.from_pretrained(merged).state_dict()
    assert names == set(reference)
    assert not [name for name in names if any(part in name for part in PEFT_LEFTOVERS)]
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert index["metadata"]["total_size"] == sum(
        t.numel() * t.element_size() for t in _stored(merged).values()
    )
    config = json.loads((merged / "config.json").read_text())
    assert config["model_type"] == "phi3_v" and config["architectures"] == ["Phi3VForCausalLM"]
    assert {"embd_layer", "img_processor", "rope_scaling"} <= set(config)
    assert config["torch_dtype"] == "float32"
    assert json.loads((merged / "preprocessor_config.json").read_text())["num_crops"] == NUM_CROPS
    assert config["num_crops"] == NUM_CROPS
    assert (merged / "tokenizer.json").is_file() and (merged / "tokenizer_config.json").is_file()
    assert str(merged.parent) not in (merged / "tokenizer_config.json").read_text()


def test_generation_config_stops_on_end_and_endoftext(merged) -> None:
    from phi3v_ray.model.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(merged)
    generation = json.loads((merged / "generation_config.json").read_text())
    stops = generation["eos_token_id"]
    assert stops[:2] == tokenizer.convert_tokens_to_ids(["<|end|>", "<|endoftext|>"])


def test_adapter_only_export_reloads_through_peft(lora_checkpoint, tmp_path, image_batch) -> None:
    from peft import PeftModel

    from phi3v_ray.model.loading import load_model

    out = tmp_path / "adapter"
    assert main(["export", "--checkpoint", str(lora_checkpoint), "--out", str(out), "--adapter-only"]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny"
    assert not list(out.glob("*.bin")) and (out / "adapter_model.safetensors").is_file()
    base, _ = load_model(config["base_model_name_or_path"])
    reloaded = PeftModel.from_pretrained(base, str(out))
    torch.testing.assert_close(
        _logits(reloaded, image_batch), _logits(load_trained_model(lora_checkpoint), image_batch)
    )
    assert "library_name: peft" in (out / "README.md").read_text()


def test_predict_answers_from_the_export_equal_the_checkpoints(lora_checkpoint, merged, tmp_path) -> None:
    from phi3v_ray.evaluation.answering import answer_images

    photos = []
    for product in PRODUCTS[:2]:
        photos.append(tmp_path / f"{product.product_code}.png")
        product.image().save(photos[-1])
    from_checkpoint = answer_images(lora_checkpoint, photos, max_new_tokens=12)
    from_export = answer_images(merged, photos, max_new_tokens=12)
    assert [a.text for a in from_export] == [a.text for a in from_checkpoint]
    assert all(a.text for a in from_export)


def test_full_fine_tune_exports_to_bfloat16(tmp_path) -> None:
    from phi3v_ray.model.loading import load_pretrained

    checkpoint = make_full_checkpoint(tmp_path / "full" / "checkpoint_000003")
    out = tmp_path / "full_export"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--dtype", "bfloat16"]) == 0
    stored = _stored(out)
    trained = load_pretrained(checkpoint / "model").state_dict()
    assert set(stored) == set(trained)
    for name, tensor in stored.items():
        assert tensor.dtype == torch.bfloat16, name
        assert torch.equal(tensor, trained[name].to(torch.bfloat16)), name
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert Phi3VForCausalLM.from_pretrained(out).dtype == torch.bfloat16


def test_evaluate_discovers_an_export_as_a_full_model_contestant(merged, lora_checkpoint) -> None:
    from phi3v_ray.evaluation.discovery import discover_checkpoints
    from phi3v_ray.evaluation.predictor import ContestantSpec

    good, broken = discover_checkpoints([merged, lora_checkpoint.parent.parent])
    assert not broken
    export = next(info for info in good if info.exported)
    spec = ContestantSpec.of_checkpoint(export)
    assert (spec.kind, spec.path) == ("full", str(merged))
    assert export.base_model.num_crops == NUM_CROPS and export.base_model.dtype == "float32"
    assert len(good) == 2
