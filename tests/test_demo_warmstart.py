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
