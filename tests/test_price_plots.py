"""Price in the pictures: predicted-vs-true scatter and price error per category, against the trivial median."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from phi3v_ray.data.answers import format_answer, parse_answer
from phi3v_ray.evaluation.leaderboard import label_split, rank_contestants
from phi3v_ray.evaluation.metrics import score_by_contestant
from phi3v_ray.evaluation.plots import price_error_by_category, write_plots

# (title, category, true price): two categories at very different price levels, as in the synthetic catalog
TRUTHS = [
    ("Check Scarf", "SCARVES", 400.0),
    ("Wool Scarf", "SCARVES", 500.0),
    ("Silk Scarf", "SCARVES", 600.0),
    ("Long Trench", "TRENCH COATS", 2000.0),
    ("Short Trench", "TRENCH COATS", 2400.0),
]
MEDIAN_PRICE = 600.0


def _rows(name: str, prices: list[float | None], split: str = "test") -> pd.DataFrame:
    records = []
    for (title, category, truth), price in zip(TRUTHS, prices, strict=True):
        answer = (
            f"Product: {title}, Category: {category}"
            if price is None
            else format_answer(title, category, price)
        )
        parsed = parse_answer(answer)
        records.append(
            {
                "checkpoint": name,
                "split": split,
                "prediction": answer,
                "pred_title": parsed.title,
                "pred_category": parsed.category,
                "pred_full_price": parsed.full_price,
                "parse_error": parsed.error,
                "title": title,
                "category": category,
                "full_price": truth,
            }
        )
    return pd.DataFrame.from_records(records)


GOOD = [440.0, 500.0, 540.0, 2200.0, None]  # 10 %, 0 %, 10 %, 10 %, not read
TRIVIAL = [MEDIAN_PRICE] * len(TRUTHS)


def test_price_error_per_category_is_the_median_error_beside_the_trivial_median_price() -> None:
    table = price_error_by_category(_rows("good", GOOD), _rows("trivial", TRIVIAL))
    assert table.index.tolist() == ["scarves", "trench coats"]  # most products first
    assert table.loc["scarves", "contestant"] == pytest.approx(0.10)
    assert table.loc["trench coats", "contestant"] == pytest.approx(
        0.10
    )  # the unread price is not a zero error
    assert table.loc["scarves", "trivial"] == pytest.approx(
        0.20
    )  # |600-500|/500 is the median of 0.5, 0.2, 0
    assert table.loc["trench coats", "trivial"] == pytest.approx(np.median([0.7, 0.75]))
    assert table["products"].tolist() == [3, 2]
    unread = price_error_by_category(_rows("none", [None] * 5), _rows("trivial", TRIVIAL))
    assert unread["contestant"].map(math.isnan).all()


def _board(rows: pd.DataFrame) -> pd.DataFrame:
    scores = score_by_contestant(rows).assign(
        kind=lambda frame: frame["checkpoint"].map({"trivial": "trivial"})
    )
    scores["kind"] = scores["kind"].fillna("lora")
    return label_split(rank_contestants(scores, "price_median_ape"), "test")


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 300 and image.height > 200
        return np.asarray(image.convert("RGB"))


def test_price_plots_are_real_pngs_and_change_when_the_predictions_change(tmp_path) -> None:
    rows = pd.concat(
        [_rows("demo-sweep/t0/checkpoint_000200", GOOD), _rows("trivial", TRIVIAL)], ignore_index=True
    )
    paths = {
        path.stem: path for path in write_plots(_board(rows), rows, "price_median_ape", tmp_path / "good")
    }
    assert {"best_price_scatter", "best_price_error_by_category"} <= set(paths)
    drawn = {name: _pixels(paths[name]) for name in ("best_price_scatter", "best_price_error_by_category")}
    for pixels in drawn.values():
        colours = np.unique(pixels.reshape(-1, 3), axis=0)
        assert len(colours) > 20  # bars, points, text and axes, not a blank canvas

    worse = [400.0 * 3, 500.0 * 3, 600.0 * 3, 2000.0 / 3, 2400.0 / 3]  # every price wrong by a factor of 3
    wrong = pd.concat(
        [_rows("demo-sweep/t0/checkpoint_000200", worse), _rows("trivial", TRIVIAL)], ignore_index=True
    )
    again = {
        path.stem: path for path in write_plots(_board(wrong), wrong, "price_median_ape", tmp_path / "wrong")
    }
    for name, pixels in drawn.items():
        other = _pixels(again[name])
        assert other.shape != pixels.shape or (other != pixels).any(), name


def test_price_plots_use_the_report_split_rows_only(tmp_path) -> None:
    on_test = _rows("demo-sweep/t0/checkpoint_000200", GOOD)
    on_val = _rows("demo-sweep/t0/checkpoint_000200", [None] * 5, split="val")
    trivial = _rows("trivial", TRIVIAL)
    board = _board(pd.concat([on_test, trivial], ignore_index=True))
    mixed = pd.concat([on_val, on_test, trivial], ignore_index=True)
    only_test = pd.concat([on_test, trivial], ignore_index=True)
    first = write_plots(board, mixed, "price_median_ape", tmp_path / "mixed")
    second = write_plots(board, only_test, "price_median_ape", tmp_path / "test")
    for left, right in zip(first, second, strict=True):
        assert (_pixels(left) == _pixels(right)).all(), left.name


def test_price_plots_accept_nullable_columns_as_parquet_returns_them(tmp_path) -> None:
    rows = pd.concat(
        [_rows("demo-sweep/t0/checkpoint_000200", GOOD), _rows("trivial", TRIVIAL)], ignore_index=True
    )
    rows.to_parquet(tmp_path / "rows.parquet", index=False)
    nullable = pd.read_parquet(tmp_path / "rows.parquet", dtype_backend="numpy_nullable")
    assert nullable["pred_full_price"].isna().sum() == 1  # the unread price is pd.NA here
    table = price_error_by_category(
        nullable[nullable["checkpoint"] != "trivial"], nullable[nullable["checkpoint"] == "trivial"]
    )
    assert table["contestant"].tolist() == pytest.approx([0.10, 0.10])
    assert len(write_plots(_board(rows), nullable, "price_median_ape", tmp_path / "plots")) == 4
