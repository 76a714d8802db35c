"""The W&B evaluation run: the leaderboard as a table and a sample of products with each top checkpoint's answer.

It joins the sweep's group so the ranking sits next to the training runs it ranks. Offline unless WANDB_API_KEY is
set in the environment (the key is never read or written here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from phi3v_ray.config import WandbSection
from phi3v_ray.tracking import finish_run, open_run


def _canvas_image(pixel_values: Any, image_size: Any) -> np.ndarray:
    """The real extent of a uint8 [3, H, W] canvas as H x W x 3."""
    height, width = (int(v) for v in image_size)
    return np.ascontiguousarray(
        np.asarray(pixel_values, dtype=np.uint8)[:, :height, :width].transpose(1, 2, 0)
    )


def sample_table_rows(
    leaderboard: pd.DataFrame, predictions: pd.DataFrame, samples: list[dict[str, Any]], top_k: int = 3
) -> tuple[list[str], list[list[Any]]]:
    """Columns and rows (image left as the canvas array) for the sample table: truth and the top_k answers."""
    top = leaderboard["checkpoint"].astype(str).tolist()[:top_k]
    answers = predictions.set_index(["checkpoint", "product_code"])["prediction"]
    columns = ["product_code", "image", "truth"] + [f"answer: {name}" for name in top]
    rows = []
    for sample in samples:
        code = sample["product_code"]
        truth = f"{sample['title']} | {sample['category']} | {float(sample['full_price'])}"
        row: list[Any] = [code, _canvas_image(sample["pixel_values"], sample["image_size"]), truth]
        row += [answers.get((name, code)) for name in top]
        rows.append(row)
    return columns, rows


def log_evaluation(
    leaderboard: pd.DataFrame,
    predictions: pd.DataFrame,
    samples: list[dict[str, Any]],
    *,
    section: WandbSection,
    group: str | None,
    directory: str | Path,
    run_name: str = "evaluation",
    primary_metric: str = "category_accuracy",
    top_k: int = 3,
) -> Path | None:
    """Write one W&B run (job_type "evaluation") and return its run directory; None when W&B is disabled."""
    run = open_run(
        section,
        {
            "primary_metric": primary_metric,
            "contestants": leaderboard["checkpoint"].astype(str).tolist(),
        },
        directory=directory,
        group=group,
        name=run_name,
        job_type="evaluation",
    )
    if run is None:
        return None
    import wandb

    try:
        table_frame = leaderboard.astype({"checkpoint": str}).replace({np.nan: None})
        columns, rows = sample_table_rows(leaderboard, predictions, samples, top_k)
        sample_rows = [[row[0], wandb.Image(row[1]), *row[2:]] for row in rows]
        run.log(
            {
                "eval/leaderboard": wandb.Table(dataframe=table_frame),
                "eval/samples": wandb.Table(columns=columns, data=sample_rows),
            }
        )
        best = leaderboard.iloc[0]
        run.summary["eval/best_checkpoint"] = str(best["checkpoint"])
        run.summary[f"eval/best_{primary_metric}"] = float(best[primary_metric])
    except BaseException:
        finish_run(run, exit_code=1)
        raise
    # Only a run whose exit record is on disk is reported as written (None otherwise, with a warning logged).
    return finish_run(run)
