"""Ranking direction, ties and the written leaderboard, for every metric the user can choose."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from phi3v_ray.errors import ConfigError
from phi3v_ray.evaluation.leaderboard import (
    DEFAULT_TIE_BREAKERS,
    rank_contestants,
    to_markdown,
    write_leaderboard,
)
from phi3v_ray.evaluation.metrics import METRIC_NAMES

LOWER_IS_BETTER = {"price_mae", "price_mape", "price_median_ape"}


def _scores(**columns: list) -> pd.DataFrame:
    count = len(next(iter(columns.values())))
    base = {name: [0.5] * count for name in METRIC_NAMES}
    base.update(columns)
    return pd.DataFrame({"checkpoint": [f"c{i}" for i in range(count)], **base})


@pytest.mark.parametrize("metric", METRIC_NAMES)
def test_each_metric_ranks_its_better_value_first(metric: str) -> None:
    ranked = rank_contestants(_scores(**{metric: [0.2, 0.8]}), primary_metric=metric, tie_breakers=())
    best = "c0" if metric in LOWER_IS_BETTER else "c1"
    assert ranked["checkpoint"].tolist()[0] == best
    assert ranked["rank"].tolist() == [1, 2]


def test_a_lower_is_better_primary_ranks_smallest_error_first_and_undefined_last() -> None:
    ranked = rank_contestants(
        _scores(price_mae=[50.0, float("nan"), 10.0, 30.0]), primary_metric="price_mae", tie_breakers=()
    )
    assert ranked["checkpoint"].tolist() == ["c2", "c3", "c0", "c1"]


def test_tie_breakers_apply_in_order_each_in_its_own_direction() -> None:
    scores = _scores(
        category_accuracy=[0.5, 0.5, 0.5],
        title_token_f1=[0.3, 0.3, 0.1],
        price_median_ape=[0.4, 0.2, 0.0],
    )
    ranked = rank_contestants(scores, primary_metric="category_accuracy")
    assert list(DEFAULT_TIE_BREAKERS).index("title_token_f1") < list(DEFAULT_TIE_BREAKERS).index(
        "price_median_ape"
    )
    assert ranked["checkpoint"].tolist() == ["c1", "c0", "c2"]
    assert ranked["rank"].tolist() == [1, 2, 3]


def test_equal_scores_share_a_rank_and_the_next_rank_skips() -> None:
    scores = _scores(category_accuracy=[0.9, 0.9, 0.1])
    scores["checkpoint"] = ["b", "a", "c"]
    ranked = rank_contestants(scores)
    assert ranked["checkpoint"].tolist() == ["a", "b", "c"]  # ties listed by name
    assert ranked["rank"].tolist() == [1, 1, 3]


def test_undefined_scores_tie_with_each_other() -> None:
    ranked = rank_contestants(
        _scores(price_mae=[float("nan")] * 2), primary_metric="price_mae", tie_breakers=()
    )
    assert ranked["rank"].tolist() == [1, 1]


def test_unknown_tie_breaker_is_a_config_error_naming_it() -> None:
    with pytest.raises(ConfigError, match="tie_breakers: unknown metric 'speed'"):
        rank_contestants(_scores(category_accuracy=[1.0]), tie_breakers=("speed",))


def test_markdown_marks_the_primary_metric_and_formats_large_and_missing_values() -> None:
    ranked = rank_contestants(_scores(price_mae=[1234.5, float("nan")], category_accuracy=[0.25, 0.125]))
    text = to_markdown(ranked, "category_accuracy")
    lines = text.splitlines()
    assert "**category_accuracy**" in lines[0] and "**price_mae**" not in lines[0]
    assert lines[1].count("---") == lines[0].count("|") - 1
    assert "| 1,234 |" in lines[2] or " 1,234 " in lines[2]
    assert "0.250" in lines[2] and "0.125" in lines[3] and "–" in lines[3]
    assert "999.000" in to_markdown(rank_contestants(_scores(price_mae=[999.0])), "price_mae")


def test_written_leaderboard_reads_back_with_its_ranking_rule(tmp_path) -> None:
    ranked = rank_contestants(_scores(price_mae=[10.0, float("nan")]), primary_metric="price_mae")
    paths = write_leaderboard(ranked, tmp_path / "out", "price_mae")
    payload = json.loads(paths["json"].read_text())
    assert payload["primary_metric"] == "price_mae"
    assert payload["tie_breakers"] == list(DEFAULT_TIE_BREAKERS)
    assert [row["checkpoint"] for row in payload["rows"]] == ["c0", "c1"]
    assert payload["rows"][1]["price_mae"] is None
    assert pd.read_csv(paths["csv"])["rank"].tolist() == [1, 2]
    assert paths["markdown"].read_text().endswith("\n")
    assert math.isnan(pd.read_csv(paths["csv"])["price_mae"].iloc[1])


def test_values_from_one_thousand_up_are_shown_as_whole_numbers_with_separators() -> None:
    text = to_markdown(rank_contestants(_scores(price_mae=[1000.0])), "price_mae")
    assert "| 1,000 |" in text and "1000.000" not in text
    negative = to_markdown(rank_contestants(_scores(price_mae=[-1500.0])), "price_mae")
    assert "| -1,500 |" in negative


def test_the_csv_holds_exactly_the_leaderboard_columns(tmp_path) -> None:
    ranked = rank_contestants(_scores(category_accuracy=[0.1, 0.9]))
    paths = write_leaderboard(ranked, tmp_path / "a" / "b", "category_accuracy")
    assert pd.read_csv(paths["csv"]).columns.tolist() == ranked.columns.tolist()
    write_leaderboard(ranked, tmp_path / "a" / "b", "category_accuracy")  # rewriting an existing folder works


def test_a_tie_below_the_top_shares_its_own_rank() -> None:
    ranked = rank_contestants(_scores(category_accuracy=[0.9, 0.5, 0.5, 0.1]))
    assert ranked["rank"].tolist() == [1, 2, 2, 4]


def test_the_ranked_table_is_rank_then_the_score_columns_with_a_fresh_index() -> None:
    scores = _scores(category_accuracy=[0.1, 0.9])
    ranked = rank_contestants(scores)
    assert ranked.columns.tolist() == ["rank", *scores.columns]
    assert ranked.index.tolist() == [0, 1]


def test_every_markdown_row_has_one_cell_per_column() -> None:
    ranked = rank_contestants(_scores(category_accuracy=[0.1, 0.9]))
    lines = to_markdown(ranked, "category_accuracy").splitlines()
    assert len({line.count("|") for line in lines}) == 1
    assert lines[2].startswith("| 1 | c1 |")
