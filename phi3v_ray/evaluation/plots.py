"""PNG figures of a leaderboard: metric per checkpoint, predicted vs true price, price error per category, and
category confusion.

The per-checkpoint bars show the split the rank comes from; the other figures show the chosen checkpoint (the
best-ranked trained one) on the reported split, next to the trivial predictor, so the lift over guessing the
median price is what the eye reads first. Drawn with matplotlib's Agg backend so they work on headless cluster
nodes and in CI.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from phi3v_ray.evaluation.leaderboard import chosen_checkpoint, splits_of
from phi3v_ray.evaluation.metrics import normalise_text, score_rows
from phi3v_ray.evaluation.trivial import TRIVIAL_NAME


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


KIND_COLOURS = {"lora": "#4C72B0", "full": "#4C72B0", "base": "#C44E52", "trivial": "#8C8C8C"}


def plot_metric_per_checkpoint(
    leaderboard: pd.DataFrame, metric: str, path: Path, split: str = "held-out"
) -> Path:
    """Horizontal bars of one metric, best contestant on top; the trivial predictor's score as a dashed line,
    so the lift a checkpoint gives over guessing is what the eye reads first."""
    plt = _pyplot()
    names = leaderboard["checkpoint"].astype(str).tolist()[::-1]
    values = pd.to_numeric(leaderboard[metric], errors="coerce").fillna(0).to_numpy()[::-1]
    kinds = (
        leaderboard["kind"].astype(str).tolist()[::-1] if "kind" in leaderboard else ["finetune"] * len(names)
    )
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(names) + 1.2))
    axes.barh(names, values, color=[KIND_COLOURS.get(kind, "#4C72B0") for kind in kinds])
    trivial = [value for value, kind in zip(values, kinds, strict=True) if kind == "trivial"]
    if trivial:
        axes.axvline(trivial[0], color="#8C8C8C", linestyle="--", linewidth=1, label="trivial predictor")
        axes.legend(loc="lower right")
    axes.set_xlabel(metric)
    axes.set_title(f"{metric}, {split} products")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _prices(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) prices of the rows where both are positive numbers (log axes need that)."""
    predicted = pd.to_numeric(rows["pred_full_price"], errors="coerce").to_numpy(dtype=float)
    truth = pd.to_numeric(rows["full_price"], errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(predicted) & np.isfinite(truth) & (predicted > 0) & (truth > 0)
    return truth[keep], predicted[keep]


def _median_ape(rows: pd.DataFrame) -> float:
    return float(score_rows(rows)["price_median_ape"]) if len(rows) else float("nan")


def plot_price_scatter(
    rows: pd.DataFrame,
    contestant: str,
    path: Path,
    trivial_rows: pd.DataFrame | None = None,
    split: str = "held-out",
) -> Path:
    """Predicted vs true full price for one contestant on log axes (prices span tens to tens of thousands), with the
    trivial predictor's one price as a dashed line and both median errors in the title."""
    plt = _pyplot()
    truth, predicted = _prices(rows)
    figure, axes = plt.subplots(figsize=(5.5, 5.5))
    title = f"{contestant[-40:]}: {len(truth)}/{len(rows)} {split} prices read"
    if len(truth):
        axes.scatter(truth, predicted, s=14, alpha=0.7, label=f"median error {_median_ape(rows):.2f}")
        low = float(min(truth.min(), predicted.min()))
        high = float(max(truth.max(), predicted.max()))
        axes.plot([low, high], [low, high], color="grey", linewidth=1)
        axes.set_xscale("log")
        axes.set_yscale("log")
    if trivial_rows is not None and len(trivial_rows):
        _, trivial_price = _prices(trivial_rows)
        if len(trivial_price):
            axes.axhline(
                float(np.median(trivial_price)),
                color="#8C8C8C",
                linestyle="--",
                linewidth=1,
                label=f"trivial median price, error {_median_ape(trivial_rows):.2f}",
            )
    if axes.get_legend_handles_labels()[0]:
        axes.legend(loc="upper left", fontsize=8)
    axes.set_xlabel("true full price")
    axes.set_ylabel("predicted full price")
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def price_error_by_category(rows: pd.DataFrame, trivial_rows: pd.DataFrame, top_k: int = 10) -> pd.DataFrame:
    """Median absolute percentage price error per true category (the top_k most common), for the contestant and
    the trivial predictor side by side; NaN where no price was read in that category."""

    def per_category(frame: pd.DataFrame) -> pd.Series:
        # plain float64: parquet may hand back nullable columns whose missing values are pd.NA, not NaN
        predicted = pd.to_numeric(frame["pred_full_price"], errors="coerce").astype(float)
        truth = pd.to_numeric(frame["full_price"], errors="coerce").astype(float)
        error = ((predicted - truth).abs() / truth.abs()).where(truth.abs() > 0)
        return error.groupby(frame["category"].map(normalise_text)).median()

    categories = rows["category"].map(normalise_text).value_counts().index[:top_k]
    table = pd.DataFrame(index=pd.Index(categories, name="category"))
    table["contestant"] = per_category(rows).reindex(categories)
    table["trivial"] = per_category(trivial_rows).reindex(categories) if len(trivial_rows) else np.nan
    table["products"] = rows["category"].map(normalise_text).value_counts().reindex(categories)
    return table.astype({"contestant": float, "trivial": float})


def plot_price_error_by_category(
    rows: pd.DataFrame,
    trivial_rows: pd.DataFrame,
    contestant: str,
    path: Path,
    top_k: int = 10,
    split: str = "held-out",
) -> Path:
    """Grouped horizontal bars of price_error_by_category: the contestant's median error beside the trivial
    median price's, per category; a shorter blue bar is lift."""
    plt = _pyplot()
    table = price_error_by_category(rows, trivial_rows, top_k).iloc[::-1]
    positions = np.arange(len(table))
    figure, axes = plt.subplots(figsize=(8, 0.5 * max(1, len(table)) + 1.4))
    height = 0.38
    axes.barh(
        positions + height / 2,
        table["contestant"].fillna(0),
        height,
        color=KIND_COLOURS["lora"],
        label=f"{contestant[-40:]} (median {_median_ape(rows):.2f})",
    )
    axes.barh(
        positions - height / 2,
        table["trivial"].fillna(0),
        height,
        color=KIND_COLOURS["trivial"],
        label=f"trivial median price (median {_median_ape(trivial_rows):.2f})",
    )
    for position, value in zip(positions, table["contestant"], strict=True):
        if not np.isfinite(value):
            axes.text(0, position + height / 2, " no price read", va="center", fontsize=7)
    axes.set_yticks(
        positions,
        [f"{name[:22]} ({count})" for name, count in zip(table.index, table["products"], strict=True)],
        fontsize=7,
    )
    axes.set_xlabel("median absolute price error (fraction of the true price; shorter is better)")
    axes.set_title(f"price error per category on {split} products: chosen checkpoint vs trivial", fontsize=9)
    axes.legend(loc="best", fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def category_confusion(rows: pd.DataFrame, top_k: int = 8) -> pd.DataFrame:
    """Counts of true (rows) vs predicted (columns) category for the top_k most common true categories."""
    truth = rows["category"].map(normalise_text)
    predicted = rows["pred_category"].map(normalise_text)
    top = truth.value_counts().index[:top_k].tolist()
    columns = top + ["(other)"]
    table = pd.DataFrame(0, index=top, columns=columns, dtype=int)
    for true_name, predicted_name in zip(truth, predicted, strict=True):
        if true_name in top:
            table.loc[true_name, predicted_name if predicted_name in top else "(other)"] += 1
    return table


def plot_category_confusion(rows: pd.DataFrame, contestant: str, path: Path, top_k: int = 8) -> Path:
    """Heat map of category_confusion for one contestant."""
    plt = _pyplot()
    table = category_confusion(rows, top_k)
    figure, axes = plt.subplots(figsize=(1.0 + 0.7 * table.shape[1], 1.0 + 0.6 * max(1, table.shape[0])))
    axes.imshow(table.to_numpy(), cmap="Blues")
    axes.set_xticks(
        range(table.shape[1]), [c[:14] for c in table.columns], rotation=45, ha="right", fontsize=7
    )
    axes.set_yticks(range(table.shape[0]), [c[:14] for c in table.index], fontsize=7)
    for (i, j), value in np.ndenumerate(table.to_numpy()):
        axes.text(j, i, str(value), ha="center", va="center", fontsize=7)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"{contestant}: category confusion")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def write_plots(
    leaderboard: pd.DataFrame, rows: pd.DataFrame, primary_metric: str, output_dir: Path
) -> list[Path]:
    """The primary metric per contestant (on the ranking split), and for the chosen checkpoint on the reported split:
    price scatter, price error per category against the trivial predictor, category confusion."""
    output_dir.mkdir(parents=True, exist_ok=True)
    ranked_on, reported_on = splits_of(leaderboard)
    if reported_on is not None and "split" in rows.columns:
        rows = rows[rows["split"] == reported_on]
    best = chosen_checkpoint(leaderboard) or str(leaderboard.iloc[0]["checkpoint"])
    best_rows = rows[rows["checkpoint"] == best]
    trivial_rows = rows[rows["checkpoint"] == TRIVIAL_NAME]
    return [
        plot_metric_per_checkpoint(
            leaderboard,
            primary_metric,
            output_dir / f"{primary_metric}_per_checkpoint.png",
            ranked_on or "held-out",
        ),
        plot_price_scatter(
            best_rows, best, output_dir / "best_price_scatter.png", trivial_rows, reported_on or "held-out"
        ),
        plot_price_error_by_category(
            best_rows,
            trivial_rows,
            best,
            output_dir / "best_price_error_by_category.png",
            split=reported_on or "held-out",
        ),
        plot_category_confusion(best_rows, best, output_dir / "best_category_confusion.png"),
    ]
