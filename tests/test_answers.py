"""Answer formatting and the tolerant parser: every variant a generating model produces reads back or says why not."""

from __future__ import annotations

import math

import pytest

from phi3v_ray.data.answers import ParsedAnswer, format_answer, parse_answer, parse_price
from phi3v_ray.errors import DataError


def test_format_answer_matches_reference_walkthrough_text() -> None:
    assert (
        format_answer("Check Trench Coat", "TRENCH COATS", 2390)
        == "Product: Check Trench Coat, Category: TRENCH COATS, Full Price: 2390.0"
    )
    assert format_answer("Lola Bag", "SHOULDER BAGS", 1234.5).endswith("Full Price: 1234.5")


def test_format_answer_collapses_newlines_so_the_answer_stays_one_line() -> None:
    assert (
        format_answer("Long\nCoat ", " BAGS", 10.0) == "Product: Long Coat, Category: BAGS, Full Price: 10.0"
    )


@pytest.mark.parametrize(
    ("title", "category", "price", "fragment"),
    [
        ("", "BAGS", 1.0, "empty title"),
        ("Bag", "  ", 1.0, "empty category"),
        ("Bag", "BAGS", float("nan"), "finite"),
        ("Bag", "BAGS", -5.0, ">= 0"),
        ("Bag", "BAGS", "cheap", "not a number"),
    ],
)
def test_format_answer_rejects_fields_that_cannot_round_trip(title, category, price, fragment) -> None:
    with pytest.raises(DataError, match=fragment):
        format_answer(title, category, price)


@pytest.mark.parametrize(
    ("title", "category", "price"),
    [
        ("Check Trench Coat", "TRENCH COATS", 2390.0),
        ("Kensington, Heritage Trench", "WALLETS & CARD CASES", 0.5),
        ("Mini Lola Bag", "N.A.", 45000.0),
        ("Cap", "CAPS & HATS", 1e16),
    ],
)
def test_formatted_answers_parse_back_to_the_same_fields(title, category, price) -> None:
    parsed = parse_answer(format_answer(title, category, price) + "<|end|>")
    assert parsed == ParsedAnswer(title, category, price, None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Product: Lola Bag, Category: BAGS, Full Price: 2390.0<|end|><|endoftext|>",
            ("Lola Bag", "BAGS", 2390.0),
        ),
        ("Product: Lola Bag, Category: BAGS, Full Price: $2,390.00", ("Lola Bag", "BAGS", 2390.0)),
        ("Product: Lola Bag, Category: BAGS, Full Price: USD 2390", ("Lola Bag", "BAGS", 2390.0)),
        ("Product: Lola Bag, Category: BAGS, Full Price: 2.390,50 €", ("Lola Bag", "BAGS", 2390.5)),
        ("Product: Lola Bag, Category: BAGS, Full Price: £1 250", ("Lola Bag", "BAGS", 1250.0)),
        ("Product: Lola Bag, Category: BAGS, Full Price: 1.2k", ("Lola Bag", "BAGS", 1200.0)),
        ("Category: BAGS, Full Price: 990.0, Product: Lola Bag", ("Lola Bag", "BAGS", 990.0)),
        ("product: Lola Bag; category: BAGS; full price: 990", ("Lola Bag", "BAGS", 990.0)),
        ("**Product:** Lola Bag\n**Category:** BAGS\n**Price:** 990", ("Lola Bag", "BAGS", 990.0)),
        (
            "Sure! Product: Lola Bag, Category: BAGS, Full Price: 990.0. Anything else?",
            ("Lola Bag", "BAGS", 990.0),
        ),
        (
            "Product: Lola Bag, Category: BAGS, Full Price: 990.0\nProduct: Other, Category: X",
            ("Lola Bag", "BAGS", 990.0),
        ),
        ("Title: Lola Bag, Category3_code: BAGS, Price = 990", ("Lola Bag", "BAGS", 990.0)),
        ('Product: "Lola Bag", Category: N.A., Full Price: 990', ("Lola Bag", "N.A.", 990.0)),
        (
            "Product: Trench, Long, Category: TRENCH COATS, Full Price: 10",
            ("Trench, Long", "TRENCH COATS", 10.0),
        ),
        ("Lola Bag, BAGS, 990.0", ("Lola Bag", "BAGS", 990.0)),
    ],
)
def test_parser_reads_answer_variants(text: str, expected: tuple[str, str, float]) -> None:
    parsed = parse_answer(text)
    assert parsed.error is None, parsed.error
    assert (parsed.title, parsed.category, parsed.full_price) == expected


@pytest.mark.parametrize(
    ("text", "partial", "reason"),
    [
        ("Product: Lola Bag, Category: BAGS", ("Lola Bag", "BAGS", None), "missing price"),
        ("Product: Lola Bag, Full Price: 10", ("Lola Bag", None, 10.0), "missing category"),
        ("Category: BAGS, Full Price: 10", (None, "BAGS", 10.0), "missing title"),
        ("Product: , Category: BAGS, Full Price: 10", (None, "BAGS", 10.0), "empty title"),
        (
            "Product: Lola Bag, Category: BAGS, Full Price: on request",
            ("Lola Bag", "BAGS", None),
            "no number",
        ),
        ("Product: Lola Bag, Category: BAGS, Full Price: -20", ("Lola Bag", "BAGS", None), "negative price"),
    ],
)
def test_parser_keeps_readable_fields_and_names_what_is_missing(text, partial, reason) -> None:
    parsed = parse_answer(text)
    assert (parsed.title, parsed.category, parsed.full_price) == partial
    assert parsed.error is not None and reason in parsed.error
    assert not parsed.ok


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty answer"),
        ("   <|end|>", "no Product/Category/Full Price fields"),
        ("I cannot tell what this is.", "no Product/Category/Full Price fields in 'I cannot tell"),
    ],
)
def test_unparseable_text_carries_a_reason(text: str, reason: str) -> None:
    parsed = parse_answer(text)
    assert parsed == ParsedAnswer(None, None, None, parsed.error)
    assert parsed.error is not None and reason in parsed.error


def test_parse_price_reads_exponent_and_rejects_non_numbers() -> None:
    assert parse_price("1e+16") == (1e16, None)
    value, error = parse_price("n/a")
    assert value is None and error is not None and "n/a" in error
    assert math.isclose(parse_price("EUR 12,5")[0], 12.5)
