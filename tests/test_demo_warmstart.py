"""The demo's warm start: what the tiny base sees before the sweep, and that it teaches numbers without prices.

The README's honesty rule is that the warm start is a *different* task: it may teach words, pictures and numbers,
never the product answer format or the catalog's prices. These tests read the texts it trains on.
"""

from __future__ import annotations

import re

import pytest

from phi3v_ray.data.synth import build_table
from phi3v_ray.data.vocabulary import COLOURS
from phi3v_ray.demo.warmstart import arithmetic_lines, describe, knowledge_lines
from phi3v_ray.model.tokenizer import tiny_tokenizer

ANSWER_LABELS = re.compile(r"Product:|Category:|Price|\$|USD|EUR", re.IGNORECASE)


def _warm_start_texts() -> list[str]:
    _, specs = build_table(60, seed=1234, broken_url_share=0.0)
    captions = [describe(spec.silhouette, spec.colour, spec.pattern, spec.material) for spec in specs]
    lines = knowledge_lines(200, seed=1) + arithmetic_lines(200, seed=2)
    return captions + [text for line in lines for text in line]


def test_warm_start_texts_never_use_the_product_answer_format_or_a_currency() -> None:
    texts = _warm_start_texts()
    assert not [text for text in texts if ANSWER_LABELS.search(text)]


def test_warm_start_writes_numbers_so_digit_tokens_are_trained_before_lora_freezes_them() -> None:
    tokenizer = tiny_tokenizer()
    digits = {str(d) for d in range(10)}
    seen: set[str] = set()
    for text in _warm_start_texts():
        seen |= set(tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])) & digits
    assert seen == digits


@pytest.mark.parametrize("seed", [3, 4])
def test_arithmetic_lines_are_true(seed: int) -> None:
    for question, answer in arithmetic_lines(300, seed=seed):
        if match := re.fullmatch(r"What is (\d+) plus (\d+)\?", question):
            first, second = int(match.group(1)), int(match.group(2))
            assert answer == f"{first} plus {second} is {first + second}."
        else:
            match = re.fullmatch(r"Round (\d+) to a multiple of (\d+)\.", question)
            assert match is not None, question
            number, step = int(match.group(1)), int(match.group(2))
            rounded = int(re.fullmatch(rf"{number} is about (\d+)\.", answer).group(1))
            assert rounded % step == 0 and abs(rounded - number) <= step / 2 or rounded == step, (
                question,
                answer,
            )


def test_arithmetic_lines_span_two_to_five_digit_numbers() -> None:
    lengths = {
        len(number) for _, answer in arithmetic_lines(400, seed=5) for number in re.findall(r"\d+", answer)
    }
    assert {2, 3, 4} <= lengths and max(lengths) <= 5


def test_captions_end_with_the_colour_values_seen_in_the_picture() -> None:
    # The one image-conditioned number: the caption's RGB must be the drawn colour's, or the base learns noise.
    caption = describe("wallet", COLOURS["Navy"], "Check", "Leather")
    assert caption == "A Navy Check Leather Wallet, RGB 28 40 90."
    assert describe("coat", COLOURS["Honey"], "Plain", "Wool") == "A Honey Wool Trench Coat, RGB 196 150 80."


def test_warm_start_drawings_are_the_catalog_pictures_at_the_size_the_model_sees() -> None:
    # The warm start draws straight at 224 px (on threads) instead of at full size and then shrinking: each
    # example's canvas must still be its own spec's picture, as the catalog path would give it, in the same order.
    import numpy as np

    from phi3v_ray.data.synth_images import draw_product
    from phi3v_ray.demo.warmstart import build_examples
    from phi3v_ray.model.configuration import Phi3VConfig
    from phi3v_ray.model.processing import Phi3VProcessor, hd_canvas
    from phi3v_ray.model.tokenizer import load_tokenizer

    processor = Phi3VProcessor.from_config(Phi3VConfig.preset("tiny"), load_tokenizer(None))
    _, specs = build_table(12, seed=77, broken_url_share=0.0)
    examples = build_examples(processor, 12, seed=77, threads=3)
    references = []
    for spec in specs:
        full = draw_product(spec)
        full.thumbnail((224, 224))
        references.append(hd_canvas(full, processor.num_crops, processor.crop_size).astype(np.float32))
    for index, (example, spec) in enumerate(zip(examples, specs, strict=True)):
        canvas = example["pixel_values"][0].astype(np.float32)
        assert canvas.shape == references[index].shape, spec
        own = np.abs(canvas - references[index]).mean()
        others = [
            np.abs(canvas - ref).mean()
            for j, ref in enumerate(references)
            if j != index and ref.shape == canvas.shape
        ]
        assert own < 2.0, (index, own)  # the same picture, resampled once instead of twice (measured <= 0.6)
        assert all(own < other for other in others), (index, own, others)
        caption = describe(spec.silhouette, spec.colour, spec.pattern, spec.material)
        assert processor.decode(example["input_ids"][example["labels"] >= 0]).startswith(caption)
