"""Rank contestants by one primary metric with tie-breakers, and write the leaderboard as CSV, JSON and Markdown.

The primary metric is the user's choice (`evaluate.primary_metric`); ties are broken by a fixed list of other
metrics, each in its own better-direction, and finally by name so the order is reproducible.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from phi3v_ray.errors import ConfigError
from phi3v_ray.evaluation.metrics import METRIC_DIRECTIONS, METRIC_NAMES

DEFAULT_TIE_BREAKERS: tuple[str, ...] = (
    "category_accuracy",
    "title_token_f1",
    "price_within_25pct",
    "price_median_ape",
    "parse_rate",
)
MARKDOWN_COLUMNS: tuple[str, ...] = (
    "rank",
    "checkpoint",
    "kind",
    "n_examples",
    "parse_rate",
    "category_accuracy",
    "title_exact_match",
    "title_token_f1",
    "price_mae",
    "price_mape",
    "price_median_ape",
    "price_within_10pct",
    "price_within_25pct",
)


def check_metric_name(name: str, key: str = "evaluate.primary_metric") -> str:
    """Reject an unknown metric name with the list of valid ones."""
    if name not in METRIC_DIRECTIONS:
        raise ConfigError(f"{key}: unknown metric {name!r}; expected one of {', '.join(METRIC_NAMES)}")
    return name


def rank_contestants(
    scores: pd.DataFrame,
    primary_metric: str = "category_accuracy",
    tie_breakers: Sequence[str] = DEFAULT_TIE_BREAKERS,
) -> pd.DataFrame:
    """Sort by the primary metric then tie-breakers (NaN last), add a 1-based `rank`; equal scores share a rank."""
    check_metric_name(primary_metric)
    for name in tie_breakers:
        check_metric_name(name, key="tie_breakers")
    order = [primary_metric] + [name for name in tie_breakers if name != primary_metric]
    ranked = scores.copy()
    sort_keys: list[str] = []
    for name in order:
        # Sorting a negated "lower is better" column keeps one ascending=False sort; NaN always sorts last.
        column = pd.to_numeric(ranked[name], errors="coerce")
        ranked[f"_sort_{name}"] = column if METRIC_DIRECTIONS[name] else -column
        sort_keys.append(f"_sort_{name}")
    ranked = ranked.sort_values(
        sort_keys + ["checkpoint"],
        ascending=[False] * len(sort_keys) + [True],
        na_position="last",
        kind="stable",
    )
    ranks: list[int] = []
    previous: tuple | None = None
    for position, row in enumerate(ranked[sort_keys].itertuples(index=False), start=1):
        values = tuple("nan" if isinstance(v, float) and math.isnan(v) else v for v in row)
        ranks.append(ranks[-1] if values == previous else position)
        previous = values
    ranked.insert(0, "rank", ranks)
    return ranked.drop(columns=sort_keys).reset_index(drop=True)


def _format_cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def to_markdown(leaderboard: pd.DataFrame, primary_metric: str) -> str:
    """A GitHub-style table of the leaderboard with the primary metric marked, for the terminal and W&B."""
    columns = [c for c in MARKDOWN_COLUMNS if c in leaderboard.columns]
    header = [f"**{c}**" if c == primary_metric else c for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for record in leaderboard[columns].itertuples(index=False):
        lines.append("| " + " | ".join(_format_cell(v) for v in record) + " |")
    return "\n".join(lines)


def write_leaderboard(leaderboard: pd.DataFrame, output_dir: Path, primary_metric: str) -> dict[str, Path]:
    """Write leaderboard.csv, leaderboard.json (records + the ranking rule) and leaderboard.md; return their paths."""
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "csv": output_dir / "leaderboard.csv",
        "json": output_dir / "leaderboard.json",
        "markdown": output_dir / "leaderboard.md",
    }
    leaderboard.to_csv(paths["csv"], index=False)
    records = json.loads(leaderboard.to_json(orient="records"))  # NaN -> null, numpy -> plain
    payload = {"primary_metric": primary_metric, "tie_breakers": list(DEFAULT_TIE_BREAKERS), "rows": records}
    paths["json"].write_text(json.dumps(payload, indent=2))
    paths["markdown"].write_text(to_markdown(leaderboard, primary_metric) + "\n")
    return paths
