"""PNG figures of a leaderboard: metric per checkpoint, predicted vs true price, and category confusion.

Drawn with matplotlib's Agg backend so they work on headless cluster nodes and in CI.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from phi3v_ray.evaluation.metrics import normalise_text


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


KIND_COLOURS = {"lora": "#4C72B0", "full": "#4C72B0", "base": "#C44E52", "trivial": "#8C8C8C"}


def plot_metric_per_checkpoint(leaderboard: pd.DataFrame, metric: str, path: Path) -> Path:
    """Horizontal bars of one metric, best contestant on top; the trivial predictor's score as a dashed line,
    so the lift a checkpoint gives over guessing is what the eye reads first."""
    plt = _pyplot()
    names = leaderboard["checkpoint"].astype(str).tolist()[::-1]
    values = pd.to_numeric(leaderboard[metric], errors="coerce").fillna(0).to_numpy()[::-1]
    kinds = leaderboard["kind"].astype(str).tolist()[::-1] if "kind" in leaderboard else ["finetune"] * len(names)
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(names) + 1.2))
    axes.barh(names, values, color=[KIND_COLOURS.get(kind, "#4C72B0") for kind in kinds])
    trivial = [value for value, kind in zip(values, kinds, strict=True) if kind == "trivial"]
    if trivial:
        axes.axvline(trivial[0], color="#8C8C8C", linestyle="--", linewidth=1, label="trivial predictor")
        axes.legend(loc="lower right")
    axes.set_xlabel(metric)
    axes.set_title(f"{metric}, held-out products")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_price_scatter(rows: pd.DataFrame, contestant: str, path: Path) -> Path:
    """Predicted vs true full price for one contestant on log axes (prices span tens to tens of thousands)."""
    plt = _pyplot()
    predicted = pd.to_numeric(rows["pred_full_price"], errors="coerce").to_numpy(dtype=float)
    truth = pd.to_numeric(rows["full_price"], errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(predicted) & np.isfinite(truth) & (predicted > 0) & (truth > 0)
    figure, axes = plt.subplots(figsize=(5, 5))
    if keep.any():
        axes.scatter(truth[keep], predicted[keep], s=14, alpha=0.7)
        low = float(min(truth[keep].min(), predicted[keep].min()))
        high = float(max(truth[keep].max(), predicted[keep].max()))
        axes.plot([low, high], [low, high], color="grey", linewidth=1)
        axes.set_xscale("log")
        axes.set_yscale("log")
    axes.set_xlabel("true full price")
    axes.set_ylabel("predicted full price")
    axes.set_title(f"{contestant}: {int(keep.sum())}/{len(rows)} prices read")
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
    """All three figures: the primary metric per contestant, and price + confusion for the top-ranked one."""
    output_dir.mkdir(parents=True, exist_ok=True)
    best = str(leaderboard.iloc[0]["checkpoint"])
    best_rows = rows[rows["checkpoint"] == best]
    return [
        plot_metric_per_checkpoint(
            leaderboard, primary_metric, output_dir / f"{primary_metric}_per_checkpoint.png"
        ),
        plot_price_scatter(best_rows, best, output_dir / "best_price_scatter.png"),
        plot_category_confusion(best_rows, best, output_dir / "best_category_confusion.png"),
    ]
