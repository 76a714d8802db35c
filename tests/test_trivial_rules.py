"""The trivial contestant's statistics: majority category, median (not mean) price, typical title."""

from __future__ import annotations

import pytest

from phi3v_ray.errors import DataError
from phi3v_ray.evaluation.trivial import TrivialPredictor


def test_price_is_the_median_so_one_outlier_does_not_move_it() -> None:
    trivial = TrivialPredictor.fit(["a", "b", "c"], ["X", "X", "X"], [100.0, 200.0, 9000.0])
    assert trivial.full_price == 200.0


def test_unreadable_prices_are_left_out_of_the_median() -> None:
    trivial = TrivialPredictor.fit(
        ["a", "b", "c", "d"], ["X"] * 4, [100.0, float("nan"), 300.0, float("inf")]
    )
    assert trivial.full_price == 200.0


def test_no_finite_price_is_an_error() -> None:
    with pytest.raises(DataError, match="no finite full_price"):
        TrivialPredictor.fit(["a"], ["X"], [float("nan")])


def test_majority_category_wins_and_a_tie_goes_to_the_first_seen() -> None:
    assert TrivialPredictor.fit(["a"] * 3, ["B", "A", "A"], [1.0] * 3).category == "A"
    assert TrivialPredictor.fit(["a"] * 4, ["B", "A", "A", "B"], [1.0] * 4).category == "B"
    assert TrivialPredictor.fit(["a"] * 3, ["TRENCH  COATS", "TRENCH COATS", "BAGS"], [1.0] * 3).category == (
        "TRENCH COATS"
    )


def test_title_has_the_median_word_count_of_the_most_common_words() -> None:
    titles = ["Check Trench Coat", "Check Wool Coat", "Lola Bag", "check cashmere scarf long"]
    trivial = TrivialPredictor.fit(titles, ["X"] * 4, [1.0] * 4)
    # word counts 3, 3, 2, 4 -> median 3; "check" x3 (first spelled "Check"), "coat" x2, then the first of the rest
    assert trivial.title == "Check Coat Trench"


def test_title_has_at_least_one_word_and_the_median_rounds_down() -> None:
    assert TrivialPredictor.fit(["", "", "Bag"], ["X"] * 3, [1.0] * 3).title == "Bag"
    trivial = TrivialPredictor.fit(["a b", "a b c"], ["X"] * 2, [1.0] * 2)  # median 2.5 words -> 2
    assert trivial.title == "a b"


def test_mismatched_or_empty_inputs_are_errors() -> None:
    with pytest.raises(DataError, match="differ in length"):
        TrivialPredictor.fit(["a"], ["X", "Y"], [1.0])
    with pytest.raises(DataError, match="no rows"):
        TrivialPredictor.fit([], [], [])


def test_answer_is_in_the_trained_format() -> None:
    trivial = TrivialPredictor.fit(["Lola Bag"], ["BAGS"], [990.0])
    assert trivial.answer() == "Product: Lola Bag, Category: BAGS, Full Price: 990.0"


def test_a_typical_title_of_one_word_stays_one_word_even_when_some_titles_are_long() -> None:
    # word counts 1, 1, 4: median 1 (a mean would say 2)
    trivial = TrivialPredictor.fit(["Bag", "Coat", "Check Wool Cashmere Scarf"], ["X"] * 3, [1.0] * 3)
    assert trivial.title == "Bag"
