"""Which checkpoint to export, and why: a checkpoint directory as given, or the winner of a leaderboard (given as a
file, found in a sweep's evaluation/ folder, or just computed by `evaluate --export-best`).

A leaderboard names checkpoints by their path below the directory the evaluation was given (`sweep/trial_a/...`);
the winner is found again by walking up from the leaderboard file. The base model and the trivial predictor are
contestants, not checkpoints: the winner is the best-ranked checkpoint, and the reason says when they ranked higher.
A sweep evaluated by nobody falls back to the lowest validation loss recorded in the checkpoints' meta.json.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from phi3v_ray.checkpoint import META_FILE, local_checkpoint, read_meta
from phi3v_ray.errors import CheckpointError

LEADERBOARD_JSON, LEADERBOARD_CSV = "leaderboard.json", "leaderboard.csv"
EVALUATION_DIR = "evaluation"
NOT_CHECKPOINTS = ("base", "trivial")
VALIDATION_METRIC = "val_loss"
ANCESTOR_LEVELS = 4


@dataclass(frozen=True)
class Leaderboard:
    """A leaderboard's rows in rank order and its ranking metric."""

    rows: list[dict[str, Any]]
    primary_metric: str
    source: str  # where it came from, for messages

    def trivial_row(self) -> dict[str, Any] | None:
        """The trivial predictor's row, for the model card's comparison."""
        return next((row for row in self.rows if row.get("kind") == "trivial"), None)


@dataclass(frozen=True)
class Choice:
    """The checkpoint to export, why it was chosen, and its leaderboard row when there is one."""

    path: Path
    name: str
    reason: str
    row: dict[str, Any] | None = None
    leaderboard: Leaderboard | None = None


def read_leaderboard(path: Path) -> Leaderboard:
    """leaderboard.json ({primary_metric, rows}) or leaderboard.csv, rows sorted by rank."""
    try:
        if path.suffix == ".csv":
            frame = pd.read_csv(path)
            rows = json.loads(frame.to_json(orient="records"))
            primary = "category_accuracy"
        else:
            payload = json.loads(path.read_text(encoding="utf-8"))
            rows, primary = payload["rows"], payload.get("primary_metric", "category_accuracy")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"{path}: not a leaderboard written by `phi3v-ray evaluate` ({error})"
        ) from None
    if not isinstance(rows, list) or any(not isinstance(r, dict) or "checkpoint" not in r for r in rows):
        raise CheckpointError(f"{path}: expected rows with a 'checkpoint' column")
    rows = sorted(rows, key=lambda row: (row.get("rank", math.inf), str(row["checkpoint"])))
    return Leaderboard(rows, primary, str(path))


def winner(board: Leaderboard, resolve: Callable[[str], Path]) -> Choice:
    """The best-ranked checkpoint of `board`; `resolve` turns its name into a local checkpoint directory."""
    ahead = []
    for row in board.rows:
        if row.get("kind") in NOT_CHECKPOINTS:
            ahead.append(f"{row['checkpoint']} (rank {row.get('rank')})")
            continue
        value = row.get(board.primary_metric)
        reason = (
            f"rank {row.get('rank')} of {len(board.rows)} contestants in {Path(board.source).name} by "
            f"{board.primary_metric} = {value}"
        )
        if ahead:
            reason += f"; the best checkpoint, though {', '.join(ahead)} ranked higher"
        return Choice(resolve(str(row["checkpoint"])), str(row["checkpoint"]), reason, row, board)
    raise CheckpointError(f"{board.source}: ranks no checkpoint (only {', '.join(NOT_CHECKPOINTS)})")


def resolver_near(leaderboard_path: Path) -> Callable[[str], Path]:
    """Find a leaderboard's checkpoint names (`root/relative`) again, walking up from the leaderboard file."""

    def resolve(name: str) -> Path:
        root, _, relative = name.partition("/")
        tried: list[Path] = []
        for ancestor in list(leaderboard_path.resolve().parents)[:ANCESTOR_LEVELS]:
            candidates = [ancestor / name]
            if ancestor.name == root:
                candidates.insert(0, ancestor / relative if relative else ancestor)
            for candidate in candidates:
                tried.append(candidate)
                if (candidate / META_FILE).is_file():
                    return candidate
        raise CheckpointError(
            f"{leaderboard_path}: its winner {name!r} points at a missing checkpoint (no {META_FILE} in "
            f"{', '.join(str(path) for path in tried[:3])})"
        )

    return resolve


def _by_validation_loss(sweep: Path) -> Choice:
    """A sweep without a leaderboard: the checkpoint with the lowest recorded validation loss."""
    from phi3v_ray.evaluation.discovery import discover_checkpoints

    good, _ = discover_checkpoints([sweep])
    scored = [c for c in good if VALIDATION_METRIC in c.meta.metrics]
    if not scored:
        raise CheckpointError(
            f"{sweep}: no {EVALUATION_DIR}/{LEADERBOARD_JSON} and no checkpoint records {VALIDATION_METRIC}; run "
            f"`phi3v-ray evaluate --checkpoints {sweep}` first or pass one checkpoint"
        )
    best = min(scored, key=lambda c: (c.meta.metrics[VALIDATION_METRIC], c.name))
    reason = (
        f"lowest {VALIDATION_METRIC} ({best.meta.metrics[VALIDATION_METRIC]:.4g}) of {len(scored)} checkpoints in "
        f"the sweep (no leaderboard found)"
    )
    return Choice(best.path, best.name, reason)


def _leaderboard_row_for(checkpoint: Path) -> tuple[dict[str, Any] | None, Leaderboard | None]:
    """The row of an evaluation/leaderboard.json above `checkpoint` that names it, if any."""
    target = checkpoint.resolve()
    for ancestor in [target, *list(target.parents)[:ANCESTOR_LEVELS]]:
        path = ancestor / EVALUATION_DIR / LEADERBOARD_JSON
        if not path.is_file():
            continue
        board = read_leaderboard(path)
        resolve = resolver_near(path)
        for row in board.rows:
            try:
                if (
                    row.get("kind") not in NOT_CHECKPOINTS
                    and resolve(str(row["checkpoint"])).resolve() == target
                ):
                    return row, board
            except CheckpointError:
                continue
    return None, None


def choose_checkpoint(given: str | os.PathLike[str]) -> Choice:
    """The checkpoint `given` designates: itself, a sweep's leaderboard winner, or a leaderboard file's winner."""
    text = os.fspath(given)
    path = Path(text)
    if path.is_file():
        board = read_leaderboard(path)
        return winner(board, resolver_near(path))
    local = local_checkpoint(text)
    if not local.is_dir():
        raise CheckpointError(f"{text}: no such checkpoint, sweep directory or leaderboard file")
    if (local / META_FILE).is_file():
        read_meta(local)  # a broken meta.json is reported now, naming the file
        row, board = _leaderboard_row_for(local)
        return Choice(local, local.name, "the checkpoint given", row, board)
    board_path = local / EVALUATION_DIR / LEADERBOARD_JSON
    if board_path.is_file():
        return winner(read_leaderboard(board_path), resolver_near(board_path))
    return _by_validation_loss(local)
