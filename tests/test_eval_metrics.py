"""Metrics, the trivial contestant, ranking and plots against small cases computed by hand."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from PIL import Image

from phi3v_ray.data.answers import parse_answer
from phi3v_ray.errors import ConfigError, DataError
from phi3v_ray.evaluation.leaderboard import rank_contestants, to_markdown, write_leaderboard
from phi3v_ray.evaluation.metrics import score_by_contestant, score_rows, token_f1
from phi3v_ray.evaluation.plots import category_confusion, write_plots
from phi3v_ray.evaluation.trivial import TrivialPredictor


def _rows(answers: list[str], truths: list[tuple[str, str, float]], checkpoint: str = "c") -> pd.DataFrame:
    records = []
    for answer, (title, category, price) in zip(answers, truths, strict=True):
        parsed = parse_answer(answer)
        records.append(
            {
                "checkpoint": checkpoint,
                "prediction": answer,
                "pred_title": parsed.title,
                "pred_category": parsed.category,
                "pred_full_price": parsed.full_price,
                "parse_error": parsed.error,
                "title": title,
                "category": category,
                "full_price": price,
            }
        )
    return pd.DataFrame.from_records(records)


HAND_ANSWERS = [
    "Product: Lola Bag, Category: BAGS, Full Price: 110.0",
    "Product: Mini Lola Bag, Category: bags , Full Price: $150",
    "Product: Trench, Category: SHIRTS",
    "no idea",
]
HAND_TRUTHS = [
    ("Lola Bag", "BAGS", 100.0),
    ("Lola Bag", "BAGS", 100.0),
    ("Check Trench Coat", "TRENCH COATS", 300.0),
    ("Cap", "CAPS", 200.0),
]


def test_token_f1_matches_hand_computation() -> None:
    assert token_f1("Mini Lola Bag", "Lola Bag") == pytest.approx(0.8)  # P 2/3, R 1
    assert token_f1("Trench", "Check Trench Coat") == pytest.approx(0.5)  # P 1, R 1/3
    assert token_f1("lola-bag", "Lola Bag") == 1.0
    assert token_f1(None, "Lola Bag") == 0.0


def test_score_rows_matches_hand_computed_values() -> None:
    scores = score_rows(_rows(HAND_ANSWERS, HAND_TRUTHS))
    expected = {
        "n_examples": 4,
        "parse_rate": 0.5,
        "category_accuracy": 0.5,  # "bags " equals BAGS after normalising; None is a miss
        "title_exact_match": 0.25,
        "title_token_f1": (1 + 0.8 + 0.5 + 0) / 4,
        "price_coverage": 0.5,
        "price_mae": (10 + 50) / 2,
        "price_mape": (0.1 + 0.5) / 2,
        "price_median_ape": 0.3,
        "price_within_10pct": 0.25,  # exactly 10% off counts as within
        "price_within_25pct": 0.25,
    }
    assert scores == pytest.approx(expected)


def test_scores_survive_a_parquet_round_trip(tmp_path) -> None:
    """Cached predictions come back with pandas' string dtype, where a missing parse error is pd.NA, not None."""
    path = tmp_path / "rows.parquet"
    _rows(HAND_ANSWERS, HAND_TRUTHS).to_parquet(path, index=False)
    assert score_rows(pd.read_parquet(path)) == pytest.approx(score_rows(_rows(HAND_ANSWERS, HAND_TRUTHS)))
    all_parsed = _rows(HAND_ANSWERS[:2], HAND_TRUTHS[:2])
    all_parsed.astype({"parse_error": "string"}).to_parquet(path, index=False)
    assert score_rows(pd.read_parquet(path))["parse_rate"] == 1.0


def test_unread_prices_leave_error_averages_undefined_not_zero() -> None:
    scores = score_rows(_rows(["no idea"], [("Cap", "CAPS", 200.0)]))
    assert math.isnan(scores["price_mae"]) and math.isnan(scores["price_median_ape"])
    assert scores["price_within_25pct"] == 0.0


def test_score_by_contestant_keeps_each_contestant_apart() -> None:
    rows = pd.concat(
        [_rows(HAND_ANSWERS[:1], HAND_TRUTHS[:1], "good"), _rows(HAND_ANSWERS[3:], HAND_TRUTHS[3:], "bad")]
    )
    scores = score_by_contestant(rows).set_index("checkpoint")
    assert scores.loc["good", "category_accuracy"] == 1.0 and scores.loc["bad", "category_accuracy"] == 0.0


def test_trivial_predictor_uses_majority_category_median_price_and_common_title_words() -> None:
    trivial = TrivialPredictor.fit(
        ["Lola Bag", "Mini Lola Bag", "Check Coat"], ["BAGS", "BAGS", "TRENCH COATS"], [100.0, 300.0, 200.0]
    )
    assert trivial == TrivialPredictor(category="BAGS", full_price=200.0, title="Lola Bag")
    assert trivial.answer() == "Product: Lola Bag, Category: BAGS, Full Price: 200.0"


def test_trivial_predictor_refuses_an_empty_training_split() -> None:
    with pytest.raises(DataError, match="no rows"):
        TrivialPredictor.fit([], [], [])


def _scores(**columns: list[float]) -> pd.DataFrame:
    names = [f"ck{i}" for i in range(len(next(iter(columns.values()))))]
    frame = pd.DataFrame({"checkpoint": names, **columns})
    for metric in (
        "category_accuracy",
        "title_token_f1",
        "price_within_25pct",
        "price_median_ape",
        "parse_rate",
    ):
        if metric not in frame:
            frame[metric] = 0.0
    return frame


def test_ranking_uses_tie_breakers_when_primary_metric_ties() -> None:
    scores = _scores(category_accuracy=[0.5, 0.5, 0.9], title_token_f1=[0.7, 0.9, 0.1])
    ranked = rank_contestants(scores, "category_accuracy")
    assert ranked["checkpoint"].tolist() == ["ck2", "ck1", "ck0"]
    assert ranked["rank"].tolist() == [1, 2, 3]


def test_ranking_by_lower_is_better_metric_puts_smallest_error_first_and_nan_last() -> None:
    scores = _scores(price_mape=[0.4, float("nan"), 0.1])
    ranked = rank_contestants(scores, "price_mape")
    assert ranked["checkpoint"].tolist() == ["ck2", "ck0", "ck1"]


def test_equal_scores_share_a_rank() -> None:
    ranked = rank_contestants(_scores(category_accuracy=[0.5, 0.5]), "category_accuracy")
    assert ranked["rank"].tolist() == [1, 1]


def test_unknown_primary_metric_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="evaluate.primary_metric: unknown metric 'accuracy'"):
        rank_contestants(_scores(category_accuracy=[0.5]), "accuracy")


def test_leaderboard_files_and_plots_are_written(tmp_path) -> None:
    rows = pd.concat(
        [_rows(HAND_ANSWERS, HAND_TRUTHS, "good"), _rows(["no idea"] * 4, HAND_TRUTHS, "bad")],
        ignore_index=True,
    )
    ranked = rank_contestants(score_by_contestant(rows), "category_accuracy")
    paths = write_leaderboard(ranked, tmp_path, "category_accuracy")
    assert pd.read_csv(paths["csv"])["checkpoint"].tolist() == ["good", "bad"]
    payload = json.loads(paths["json"].read_text())
    assert payload["primary_metric"] == "category_accuracy" and payload["rows"][1]["price_mae"] is None
    assert "**category_accuracy**" in to_markdown(ranked, "category_accuracy")
    for png in write_plots(ranked, rows, "category_accuracy", tmp_path):
        with Image.open(png) as image:
            assert image.format == "PNG" and image.width > 100


def test_category_confusion_counts_predictions_outside_top_categories_as_other() -> None:
    table = category_confusion(_rows(HAND_ANSWERS, HAND_TRUTHS), top_k=2)
    assert table.loc["bags", "bags"] == 2
    assert table.loc["trench coats", "(other)"] == 1
    assert int(table.to_numpy().sum()) == 3  # "caps" is outside the top 2 true categories
