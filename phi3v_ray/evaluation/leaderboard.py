"""Rank contestants by one primary metric with tie-breakers, and write the leaderboard as CSV, JSON and Markdown.

The primary metric is the user's choice (`evaluate.primary_metric`); ties are broken by a fixed list of other
metrics, each in its own better-direction, and finally by name so the order is reproducible.

Which split each number comes from is part of the table: the `split` column names the split of the plain metric
columns (the ones the rank is computed from). When the ranking split differs from the reported one (`evaluate.
select_on`), the chosen checkpoint, the base model and the trivial predictor also carry `<split>_<metric>` columns
(e.g. `test_category_accuracy`), scored after the choice; the other rows leave them empty.
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


SPLITS: tuple[str, ...] = ("train", "val", "test")
SCORE_COLUMNS: tuple[str, ...] = ("n_examples", *METRIC_NAMES)
TRAINED_KINDS: tuple[str, ...] = ("lora", "full")


def label_split(leaderboard: pd.DataFrame, split: str) -> pd.DataFrame:
    """The leaderboard with a `split` column (after `kind`) naming the split its plain metric columns come from."""
    labelled = leaderboard.drop(columns=["split"], errors="ignore")
    position = list(labelled.columns).index("kind") + 1 if "kind" in labelled.columns else 1
    labelled.insert(position, "split", split)
    return labelled


def chosen_checkpoint(leaderboard: pd.DataFrame) -> str | None:
    """The best-ranked trained checkpoint (not the base model or trivial predictor); None when there is none."""
    trained = leaderboard[leaderboard["kind"].isin(TRAINED_KINDS)] if "kind" in leaderboard else leaderboard
    return str(trained.iloc[0]["checkpoint"]) if len(trained) else None


def attach_report(leaderboard: pd.DataFrame, report_scores: pd.DataFrame, reported_on: str) -> pd.DataFrame:
    """Add `<reported_on>_<metric>` columns from `report_scores` (one row per contestant scored on that split)."""
    columns = [c for c in SCORE_COLUMNS if c in report_scores.columns]
    prefixed = report_scores[["checkpoint", *columns]].rename(
        columns={c: f"{reported_on}_{c}" for c in columns}
    )
    merged = leaderboard.merge(prefixed, on="checkpoint", how="left")
    merged.attrs.update(leaderboard.attrs)
    return merged


def splits_of(leaderboard: pd.DataFrame) -> tuple[str | None, str | None]:
    """(ranked_on, reported_on) as the table itself records them; reported_on equals ranked_on without a report."""
    ranked_on = str(leaderboard["split"].iloc[0]) if "split" in leaderboard and len(leaderboard) else None
    reported = [name for name in SPLITS if f"{name}_n_examples" in leaderboard.columns]
    return ranked_on, (reported[0] if reported else ranked_on)


def reported_rows(leaderboard: pd.DataFrame) -> pd.DataFrame:
    """The contestants with figures on the reported split, under the plain metric names (for verdicts and cards).

    Without a separate report split that is the leaderboard itself; with one, only the rows scored on it."""
    ranked_on, reported_on = splits_of(leaderboard)
    if reported_on is None or reported_on == ranked_on:
        return leaderboard.copy()
    prefixed = {f"{reported_on}_{c}": c for c in SCORE_COLUMNS if f"{reported_on}_{c}" in leaderboard.columns}
    rows = leaderboard[leaderboard[f"{reported_on}_n_examples"].notna()]
    kept = [c for c in ("rank", "checkpoint", "kind") if c in rows.columns]
    report = rows[[*kept, *prefixed]].rename(columns=prefixed).reset_index(drop=True)
    report["n_examples"] = report["n_examples"].astype(int)
    report.insert(len(kept), "split", reported_on)
    return report


def _format_cell(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _table(rows: pd.DataFrame, primary_metric: str, chosen: str | None = None) -> list[str]:
    columns = [c for c in MARKDOWN_COLUMNS if c in rows.columns]
    header = [f"**{c}**" if c == primary_metric else c for c in columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for record in rows[columns].to_dict("records"):
        cells = [_format_cell(record[c]) for c in columns]
        if chosen is not None and record.get("checkpoint") == chosen:
            cells[columns.index("checkpoint")] += " (chosen)"
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _products(rows: pd.DataFrame) -> str:
    counts = pd.to_numeric(rows.get("n_examples", pd.Series(dtype=float)), errors="coerce").dropna()
    return f"{int(counts.max())} products" if len(counts) else "no products"


def to_markdown(leaderboard: pd.DataFrame, primary_metric: str) -> str:
    """A GitHub-style table of the leaderboard with the primary metric marked, for the terminal and W&B; with a
    separate report split, a second table of the figures reported on it, each table captioned with its split."""
    ranked_on, reported_on = splits_of(leaderboard)
    if ranked_on is None:
        return "\n".join(_table(leaderboard, primary_metric))
    if reported_on == ranked_on:
        caption = f"Ranked and reported on {ranked_on} ({_products(leaderboard)}):"
        return "\n".join([caption, "", *_table(leaderboard, primary_metric)])
    chosen = chosen_checkpoint(leaderboard)
    report = reported_rows(leaderboard)
    lines = [
        f"Ranked on {ranked_on} ({_products(leaderboard)}) by {primary_metric}:",
        "",
        *_table(leaderboard, primary_metric),
        "",
        f"Reported on {reported_on} ({_products(report)}), scored after the choice: the checkpoint ranked first on "
        f"{ranked_on}, beside the base model and the trivial predictor:",
        "",
        *_table(report.drop(columns=["rank"]), primary_metric, chosen),
    ]
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
    ranked_on, reported_on = splits_of(leaderboard)
    payload = {
        "primary_metric": primary_metric,
        "tie_breakers": list(DEFAULT_TIE_BREAKERS),
        "ranked_on": ranked_on,
        "reported_on": reported_on,
        "chosen": chosen_checkpoint(leaderboard),
        "rows": records,
    }
    paths["json"].write_text(json.dumps(payload, indent=2))
    paths["markdown"].write_text(to_markdown(leaderboard, primary_metric) + "\n")
    return paths
