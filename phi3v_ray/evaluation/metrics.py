"""Metrics on generated answers, computed per contestant from evaluation rows.

An unparsed field counts as wrong in every share (accuracy, exact match, within-X%), so a model cannot look better
by refusing to answer; the price error averages (MAE, MAPE, median APE) can only be taken over the prices that were
read, so `price_coverage` is reported beside them.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import numpy as np
import pandas as pd

from phi3v_ray.data.schema import is_missing

# metric -> True when higher is better; the leaderboard ranks with these directions
METRIC_DIRECTIONS: dict[str, bool] = {
    "parse_rate": True,
    "category_accuracy": True,
    "title_exact_match": True,
    "title_token_f1": True,
    "price_coverage": True,
    "price_mae": False,
    "price_mape": False,
    "price_median_ape": False,
    "price_within_10pct": True,
    "price_within_25pct": True,
}
METRIC_NAMES: tuple[str, ...] = tuple(METRIC_DIRECTIONS)

# Columns an evaluation row carries (docs/interfaces.md, "Evaluation row").
REQUIRED_COLUMNS = (
    "pred_title",
    "pred_category",
    "pred_full_price",
    "parse_error",
    "title",
    "category",
    "full_price",
)

_TOKEN_PATTERN = re.compile(r"[0-9a-z]+")


def normalise_text(text: object) -> str:
    """Case- and whitespace-insensitive form for comparing a predicted field with the truth."""
    if is_missing(text):
        return ""
    return " ".join(str(text).casefold().split())


def title_tokens(text: object) -> list[str]:
    """Lower-case alphanumeric words: punctuation and spacing differences are not title errors."""
    return _TOKEN_PATTERN.findall(normalise_text(text))


def token_f1(predicted: object, truth: object) -> float:
    """SQuAD-style token F1 between two titles (multiset overlap); 0 when either side has no words."""
    predicted_tokens, truth_tokens = title_tokens(predicted), title_tokens(truth)
    if not predicted_tokens or not truth_tokens:
        return 0.0
    overlap = sum((Counter(predicted_tokens) & Counter(truth_tokens)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted_tokens), overlap / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def score_rows(rows: pd.DataFrame) -> dict[str, float]:
    """All metrics for one contestant's rows; shares are over every row, price errors over rows with a read price."""
    missing = [column for column in REQUIRED_COLUMNS if column not in rows.columns]
    if missing:
        raise ValueError(f"evaluation rows lack columns {missing}; have {list(rows.columns)}")
    count = len(rows)
    if count == 0:
        return {"n_examples": 0, **{name: float("nan") for name in METRIC_NAMES}}

    parsed_ok = rows["parse_error"].map(is_missing).to_numpy()
    category_hit = np.array(
        [
            not is_missing(p) and normalise_text(p) == normalise_text(t)
            for p, t in zip(rows["pred_category"], rows["category"], strict=True)
        ]
    )
    title_hit = np.array(
        [
            not is_missing(p) and normalise_text(p) == normalise_text(t)
            for p, t in zip(rows["pred_title"], rows["title"], strict=True)
        ]
    )
    title_f1 = np.array([token_f1(p, t) for p, t in zip(rows["pred_title"], rows["title"], strict=True)])

    predicted = pd.to_numeric(rows["pred_full_price"], errors="coerce").to_numpy(dtype=float)
    truth = pd.to_numeric(rows["full_price"], errors="coerce").to_numpy(dtype=float)
    has_price = np.isfinite(predicted) & np.isfinite(truth)
    absolute_error = np.abs(predicted - truth)
    with np.errstate(divide="ignore", invalid="ignore"):
        percentage_error = absolute_error / np.abs(truth)
    has_percentage = has_price & (np.abs(truth) > 0)

    def mean_or_nan(values: np.ndarray) -> float:
        return float(values.mean()) if values.size else float("nan")

    return {
        "n_examples": count,
        "parse_rate": float(parsed_ok.mean()),
        "category_accuracy": float(category_hit.mean()),
        "title_exact_match": float(title_hit.mean()),
        "title_token_f1": float(title_f1.mean()),
        "price_coverage": float(has_price.mean()),
        "price_mae": mean_or_nan(absolute_error[has_price]),
        "price_mape": mean_or_nan(percentage_error[has_percentage]),
        "price_median_ape": float(np.median(percentage_error[has_percentage]))
        if has_percentage.any()
        else float("nan"),
        "price_within_10pct": float((has_percentage & (percentage_error <= 0.10 + 1e-12)).sum() / count),
        "price_within_25pct": float((has_percentage & (percentage_error <= 0.25 + 1e-12)).sum() / count),
    }


def score_by_contestant(rows: pd.DataFrame, key: str = "checkpoint") -> pd.DataFrame:
    """One metrics row per contestant (the `key` column), in first-seen order."""
    order: Iterable[str] = dict.fromkeys(rows[key]).keys()
    records = [{key: name, **score_rows(rows[rows[key] == name])} for name in order]
    return pd.DataFrame.from_records(records)
