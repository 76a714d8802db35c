"""The tiny model fed by the real processor: PIL images → encode_product → collate → loss and generation."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from phi3v_ray.model import Phi3VForCausalLM
from phi3v_ray.model.loading import load_model
from phi3v_ray.model.processing import Phi3VProcessor


@pytest.fixture(scope="module")
def model_and_processor() -> tuple[Phi3VForCausalLM, Phi3VProcessor]:
    model, tokenizer = load_model("tiny")
    return model, Phi3VProcessor.from_config(model.config, tokenizer)


def photos() -> list[Image.Image]:
    """A landscape and a portrait product photo, so the two canvases have different crop grids."""
    return [Image.new("RGB", (120, 70), (200, 30, 30)), Image.new("RGB", (50, 130), (20, 90, 200))]


def test_processor_batch_trains_on_answer_tokens(
    model_and_processor: tuple[Phi3VForCausalLM, Phi3VProcessor],
) -> None:
    model, processor = model_and_processor
    examples = [
        processor.encode_product(photo, answer="Product: Scarf, Category: Scarves") for photo in photos()
    ]
    batch = processor.collate(examples, padding_side="right")
    assert batch["pixel_values"].dtype == torch.uint8
    model.train()
    loss = model(**batch).loss
    model.eval()
    assert torch.isfinite(loss) and loss > 0


def test_processor_left_padded_batch_generates_like_single_examples(
    model_and_processor: tuple[Phi3VForCausalLM, Phi3VProcessor],
) -> None:
    model, processor = model_and_processor
    examples = [processor.encode_product(photo) for photo in photos()]
    batch = processor.collate(examples, padding_side="left")
    generated = model.generate(**batch, max_new_tokens=5, do_sample=False)[:, batch["input_ids"].shape[1] :]
    for row, example in enumerate(examples):
        single = processor.collate([example], padding_side="left")
        alone = model.generate(**single, max_new_tokens=5, do_sample=False)[0, single["input_ids"].shape[1] :]
        assert generated[row, : len(alone)].tolist() == alone.tolist()
        assert isinstance(processor.decode(alone), str)
