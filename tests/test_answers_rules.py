"""Prices as catalogs and models write them, US and European, and the edges of the answer format."""

from __future__ import annotations

import pytest

from phi3v_ray.data.answers import format_answer, format_price, parse_answer, parse_price


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # European: comma decimal, dot / space / no-break-space / apostrophe thousands
        ("1 250,50 €", 1250.5),
        ("1\u00a0250,50 €", 1250.5),
        ("1\u202f250,50 EUR", 1250.5),
        ("2.390 €", 2390.0),
        ("EUR 2.390", 2390.0),
        ("2.390,00 €", 2390.0),
        ("1.250.000 €", 1_250_000.0),
        ("1.250.000,75", 1_250_000.75),
        ("CHF 1'250.50", 1250.5),
        ("12,50 €", 12.5),
        ("2390,5", 2390.5),
        ("0,500", 0.5),
        # US: comma thousands, dot decimal
        ("1,250.50", 1250.5),
        ("$2,390", 2390.0),
        ("$1,250,000", 1_250_000.0),
        ("2390.00", 2390.0),
        ("USD 2390", 2390.0),
        ("$2.39", 2.39),
        # the format the model is trained on (Python float repr)
        ("2390.0", 2390.0),
        ("1e+16", 1e16),
    ],
)
def test_prices_read_as_a_person_would_in_us_and_european_conventions(text: str, expected: float) -> None:
    assert parse_price(text) == (expected, None)


def test_a_lone_dot_with_three_digits_groups_thousands_only_next_to_a_currency() -> None:
    assert parse_price("2.390 €")[0] == 2390.0
    assert parse_price("£2.390")[0] == 2390.0
    assert parse_price("2.390")[0] == 2.39  # no currency: Python's float reading
    assert parse_price("2390.500")[0] == 2390.5  # four digits before the dot cannot be a thousands group


def test_a_lone_comma_with_three_digits_groups_thousands_in_either_convention() -> None:
    assert parse_price("2,390")[0] == 2390.0
    assert parse_price("12,500 €")[0] == 12500.0
    assert parse_price("12,50 €")[0] == 12.5


def test_european_prices_read_back_through_the_whole_answer() -> None:
    parsed = parse_answer("Product: Lola Bag, Category: BAGS, Full Price: 1 250,50 €")
    assert (parsed.title, parsed.category, parsed.full_price, parsed.error) == (
        "Lola Bag",
        "BAGS",
        1250.5,
        None,
    )
    parsed = parse_answer("Product: Lola Bag, Category: BAGS, Full Price: 2.390 €")
    assert parsed.full_price == 2390.0


@pytest.mark.parametrize(
    ("text", "expected"), [("1.2k", 1200.0), ("3M", 3_000_000.0), ("2,5 k", 2500.0), ("1 250 m", 1.25e9)]
)
def test_thousand_and_million_suffixes_scale_the_price(text: str, expected: float) -> None:
    assert parse_price(text) == (expected, None)


def test_negative_and_non_finite_prices_are_refused_with_a_reason() -> None:
    assert parse_price("-2,390.00") == (None, "negative price '-2,390.00'")
    value, error = parse_price("1e400")
    assert value is None and error == "price '1e400' is not finite"


def test_a_free_price_formats_and_reads_back_as_zero() -> None:
    assert format_price(0) == "0.0"
    assert parse_answer(format_answer("Gift Card", "CARDS", 0)).full_price == 0.0


def test_format_price_writes_python_float_repr() -> None:
    assert format_price(2390) == "2390.0"
    assert format_price(1234.5) == "1234.5"


def test_the_first_answer_counts_when_the_model_repeats_a_field() -> None:
    parsed = parse_answer("Product: A, Category: X, Full Price: 1\nProduct: B, Category: Y, Full Price: 2")
    assert (parsed.title, parsed.category, parsed.full_price) == ("A", "X", 1.0)


def test_unlabelled_answers_need_three_fields_with_a_number_last() -> None:
    assert parse_answer("Lola Bag, BAGS").error is not None
    assert parse_answer("Lola Bag, BAGS, on request").error is not None
    parsed = parse_answer("\n\nMini Lola, Bag, BAGS, 990")
    assert (parsed.title, parsed.category, parsed.full_price) == ("Mini Lola, Bag", "BAGS", 990.0)


def test_every_problem_is_named_together() -> None:
    parsed = parse_answer("Product: , Category: , Full Price: none")
    assert parsed.error == "empty title; empty category; no number in price field 'none'"
    assert (parsed.title, parsed.category, parsed.full_price) == (None, None, None)
    assert not parsed.ok
    assert parse_answer("Product: A, Category: B, Full Price: 1").ok


def test_quotes_and_separators_around_values_are_dropped() -> None:
    parsed = parse_answer("Product: `Lola Bag`; Category: 'BAGS' | Full Price: 990")
    assert (parsed.title, parsed.category) == ("Lola Bag", "BAGS")


def test_a_parsed_answer_is_immutable_so_it_can_key_a_cache() -> None:
    parsed = parse_answer("Product: A, Category: B, Full Price: 1")
    with pytest.raises(AttributeError):
        parsed.title = "other"  # type: ignore[misc]
    assert {parsed: 1}[parse_answer("Product: A, Category: B, Full Price: 1")] == 1


def test_an_unreadable_answer_quotes_at_most_sixty_characters_of_it() -> None:
    text = "x" * 59 + "yz" + " tail" * 10
    assert parse_answer(text).error == f"no Product/Category/Full Price fields in {text[:60]!r}"


def test_a_lone_comma_groups_thousands_only_after_one_to_three_digits() -> None:
    assert parse_price("123,456") == (123456.0, None)
    assert parse_price("1234,567") == (1234.567, None)  # four digits cannot lead a thousands group


def test_a_labelled_value_ends_at_its_line_even_before_the_next_label() -> None:
    parsed = parse_answer("Product: Lola Bag\nI think it suits you.\nCategory: BAGS\nFull Price: 10")
    assert (parsed.title, parsed.category, parsed.full_price) == ("Lola Bag", "BAGS", 10.0)


def test_two_unlabelled_fields_are_not_an_answer_even_with_a_number_last() -> None:
    assert parse_answer("Lola Bag, 990").error == "no Product/Category/Full Price fields in 'Lola Bag, 990'"
