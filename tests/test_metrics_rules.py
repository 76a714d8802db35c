"""Metric definitions pinned by small cases whose answers differ under any plausible misdefinition."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from phi3v_ray.evaluation.metrics import (
    METRIC_DIRECTIONS,
    normalise_text,
    score_by_contestant,
    score_rows,
    title_tokens,
    token_f1,
)


def _rows(predicted_prices: list[float | None], true_prices: list[float], **columns: list) -> pd.DataFrame:
    count = len(true_prices)
    frame = {
        "pred_title": ["T"] * count,
        "pred_category": ["C"] * count,
        "pred_full_price": predicted_prices,
        "parse_error": [None] * count,
        "title": ["T"] * count,
        "category": ["C"] * count,
        "full_price": true_prices,
    }
    frame.update(columns)
    return pd.DataFrame(frame)


def test_median_ape_is_the_median_not_the_mean_of_percentage_errors() -> None:
    scores = score_rows(_rows([110.0, 110.0, 300.0], [100.0, 100.0, 100.0]))  # errors 10%, 10%, 200%
    assert scores["price_median_ape"] == pytest.approx(0.10)
    assert scores["price_mape"] == pytest.approx((0.1 + 0.1 + 2.0) / 3)
    assert scores["price_mae"] == pytest.approx((10 + 10 + 200) / 3)


def test_median_ape_of_an_even_count_averages_the_middle_two() -> None:
    scores = score_rows(_rows([110.0, 120.0, 130.0, 500.0], [100.0] * 4))
    assert scores["price_median_ape"] == pytest.approx(0.25)


def test_within_x_percent_includes_the_boundary_and_counts_every_row() -> None:
    # 10% and 25% exactly are inside; the unread price counts as a miss in the share
    scores = score_rows(_rows([110.0, 125.0, 126.0, None], [100.0] * 4))
    assert scores["price_within_10pct"] == pytest.approx(1 / 4)
    assert scores["price_within_25pct"] == pytest.approx(2 / 4)
    assert scores["price_coverage"] == pytest.approx(3 / 4)


def test_a_zero_true_price_counts_for_absolute_but_not_percentage_error() -> None:
    scores = score_rows(_rows([5.0, 150.0], [0.0, 100.0]))
    assert scores["price_mae"] == pytest.approx((5 + 50) / 2)
    assert scores["price_mape"] == pytest.approx(0.5)
    assert scores["price_median_ape"] == pytest.approx(0.5)
    assert scores["price_within_25pct"] == 0.0


def test_price_errors_are_undefined_when_no_price_was_read() -> None:
    scores = score_rows(_rows([None, None], [100.0, 100.0]))
    assert math.isnan(scores["price_mae"]) and math.isnan(scores["price_mape"])
    assert math.isnan(scores["price_median_ape"])
    assert scores["price_coverage"] == 0.0 and scores["price_within_10pct"] == 0.0


def test_shares_are_over_every_row_and_a_missing_prediction_is_never_a_hit() -> None:
    rows = _rows(
        [100.0, 100.0, 100.0],
        [100.0, 100.0, 100.0],
        pred_category=["bags", None, "SHOES"],
        category=["BAGS", "BAGS", "BAGS"],
        pred_title=[" lola  BAG", None, "x"],
        title=["Lola Bag", "Lola Bag", "Lola Bag"],
        parse_error=[None, "missing title", None],
    )
    scores = score_rows(rows)
    assert scores["category_accuracy"] == pytest.approx(1 / 3)
    assert scores["title_exact_match"] == pytest.approx(1 / 3)
    assert scores["parse_rate"] == pytest.approx(2 / 3)
    assert scores["n_examples"] == 3


def test_a_missing_truth_never_matches_a_missing_prediction() -> None:
    rows = _rows([1.0], [1.0], pred_category=[None], category=[None], pred_title=[pd.NA], title=[pd.NA])
    scores = score_rows(rows)
    assert scores["category_accuracy"] == 0.0 and scores["title_exact_match"] == 0.0


def test_token_f1_is_the_harmonic_mean_of_token_precision_and_recall() -> None:
    # predicted 4 tokens, truth 2 tokens, overlap 2: precision 1/2, recall 1 -> F1 2/3
    assert token_f1("Lola Bag Small Black", "lola bag") == pytest.approx(2 / 3)
    # overlap counts repeated words only as often as both sides have them
    assert token_f1("bag bag bag", "bag coat") == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))
    assert token_f1("", "bag") == 0.0 and token_f1("bag", None) == 0.0 and token_f1("coat", "bag") == 0.0


def test_titles_compare_case_and_spacing_insensitively() -> None:
    assert normalise_text("  Lola\tBAG ") == "lola bag"
    assert normalise_text(None) == "" and normalise_text(pd.NA) == ""
    assert title_tokens("Lola-Bag, 2 Tone!") == ["lola", "bag", "2", "tone"]


def test_empty_rows_give_undefined_metrics_and_missing_columns_are_named() -> None:
    scores = score_rows(_rows([], []))
    assert scores["n_examples"] == 0 and all(math.isnan(scores[name]) for name in METRIC_DIRECTIONS)
    with pytest.raises(ValueError, match="pred_title"):
        score_rows(pd.DataFrame({"title": ["x"]}))


def test_error_metrics_are_lower_is_better_and_shares_higher_is_better() -> None:
    lower_is_better = {"price_mae", "price_mape", "price_median_ape"}
    assert {name for name, higher in METRIC_DIRECTIONS.items() if not higher} == lower_is_better
    assert all(METRIC_DIRECTIONS[name] for name in set(METRIC_DIRECTIONS) - lower_is_better)


def test_contestants_are_scored_apart_in_first_seen_order() -> None:
    rows = pd.concat(
        [
            _rows([100.0], [100.0]).assign(checkpoint="b"),
            _rows([300.0], [100.0]).assign(checkpoint="a"),
        ]
    )
    scores = score_by_contestant(rows)
    assert scores["checkpoint"].tolist() == ["b", "a"]
    assert scores["price_mae"].tolist() == [0.0, 200.0]


def test_within_ten_percent_stops_at_ten_percent() -> None:
    scores = score_rows(_rows([109.0, 115.0, 95.0, 80.0], [100.0] * 4))
    assert scores["price_within_10pct"] == pytest.approx(2 / 4)
    assert scores["price_within_25pct"] == pytest.approx(4 / 4)


def test_a_true_price_below_one_still_has_a_percentage_error() -> None:
    scores = score_rows(_rows([0.6], [0.5]))
    assert scores["price_mape"] == pytest.approx(0.2)
    assert scores["price_within_25pct"] == 1.0
