"""Score contestants on a dataset: checkpoints in, leaderboard out.

Reads top to bottom: discover checkpoints → reuse cached predictions by content key → Ray Data batch inference for
the rest (one actor pool per base model) → trivial contestant → metrics → ranked leaderboard, files and plots.
Predictions are cached per (evaluation inputs, checkpoint content), so a re-run after a sweep grows only scores
the new checkpoints, and a checkpoint that fails is listed with its reason while the others are still scored.
With `evaluate.select_on` the ranking happens on that split first; only then are the chosen checkpoint, the base
model and the trivial predictor scored on `evaluate.split`, so the reported figures cannot steer the choice.
An output directory in a bucket is staged locally (pandas, matplotlib and the cache write local files): its cache is
fetched first, so a re-run reuses it, and everything written is uploaded when the evaluation ends.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from phi3v_ray.checkpoint import base_model_key, model_source
from phi3v_ray.config import EvalSection, ModelSection
from phi3v_ray.data.actor_retries import map_batches_with_retries
from phi3v_ray.data.answers import parse_answer
from phi3v_ray.errors import CheckpointError
from phi3v_ray.evaluation.discovery import BrokenCheckpoint, CheckpointInfo, discover_checkpoints
from phi3v_ray.evaluation.leaderboard import (
    attach_report,
    check_metric_name,
    chosen_checkpoint,
    label_split,
    rank_contestants,
    to_markdown,
    write_leaderboard,
)
from phi3v_ray.evaluation.metrics import score_by_contestant
from phi3v_ray.evaluation.plots import write_plots
from phi3v_ray.evaluation.predictor import (
    BASE_NAME,
    OUTPUT_COLUMNS,
    CheckpointPredictor,
    ContestantSpec,
    base_model_kwargs,
)
from phi3v_ray.evaluation.trivial import TRIVIAL_NAME, TrivialPredictor
from phi3v_ray.storage import Location, download_tree, is_uri, location, upload_tree

TRUTH_COLUMNS = ["product_code", "title", "category", "full_price"]
# A lost evaluation actor is recreated elsewhere (it reloads the base and every adapter) and its batches retried
# (phi3v_ray.data.actor_retries). Exactly once holds because actors write nothing: a batch's rows reach the driver
# only from the attempt that finished, the driver checks every contestant has one row per product, and only then
# writes the cache files.


@dataclass
class EvaluationResult:
    """What one evaluation produced and where it wrote it."""

    leaderboard: pd.DataFrame
    predictions: pd.DataFrame
    broken: list[BrokenCheckpoint]
    scored_now: list[str]
    reused: list[str]
    files: dict[str, Path | Location] = field(default_factory=dict)  # Locations for a bucket output_dir
    ranked_on: str = "test"  # the split the rank comes from
    reported_on: str = "test"  # the split of the figures reported for the chosen checkpoint

    @property
    def markdown(self) -> str:
        """The leaderboard as a Markdown table."""
        primary = str(self.leaderboard.attrs.get("primary_metric", "category_accuracy"))
        return to_markdown(self.leaderboard, primary)


def evaluation_signature(truth: pd.DataFrame, settings: EvalSection) -> str:
    """Key of the evaluation inputs: which products, their truth, and generation length (batching does not matter)."""
    digest = hashlib.sha256()
    ordered = truth[TRUTH_COLUMNS].astype(str).sort_values(TRUTH_COLUMNS)
    for values in ordered.itertuples(index=False, name=None):
        digest.update(json.dumps(values).encode())
    digest.update(f"max_new_tokens={settings.max_new_tokens}".encode())
    return digest.hexdigest()[:16]


def contestant_specs(
    checkpoints: list[CheckpointInfo], include_base: bool
) -> dict[str, tuple[ModelSection, list[ContestantSpec]]]:
    """Group contestants by base model: base key -> (base ModelSection, specs sharing that base)."""
    groups: dict[str, tuple[ModelSection, list[ContestantSpec]]] = {}
    for checkpoint in checkpoints:
        key = base_model_key(checkpoint.base_model)
        _, specs = groups.setdefault(key, (checkpoint.base_model, []))
        specs.append(ContestantSpec.of_checkpoint(checkpoint))
    if include_base:
        many_bases = len(groups) > 1
        for key, (base, specs) in groups.items():
            name = f"{BASE_NAME}[{model_source(base)}]" if many_bases else BASE_NAME
            specs.insert(0, ContestantSpec(name, "base", None, f"base-{key}"))
    return groups


def run_predictor(
    dataset: Any, base: ModelSection, specs: list[ContestantSpec], settings: EvalSection
) -> pd.DataFrame:
    """Ray Data batch inference: an actor pool whose actors each hold the base once and every contestant's adapter."""
    import ray

    predictions = map_batches_with_retries(
        dataset,
        CheckpointPredictor,
        fn_constructor_kwargs={
            **base_model_kwargs(base),
            "contestants": [spec.to_dict() for spec in specs],
            "max_new_tokens": settings.max_new_tokens,
        },
        batch_size=settings.batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=settings.num_actors),
        num_cpus=settings.cpus_per_actor,
        num_gpus=settings.gpus_per_actor or None,
    )
    return predictions.to_pandas()


def trivial_rows(trivial: TrivialPredictor, truth: pd.DataFrame) -> pd.DataFrame:
    """The trivial contestant's rows: the same answer for every product, parsed like any model's."""
    answer = trivial.answer()
    parsed = parse_answer(answer)
    rows = truth[TRUTH_COLUMNS].copy()
    rows["checkpoint"] = TRIVIAL_NAME
    rows["content_key"] = f"trivial-{hashlib.sha256(answer.encode()).hexdigest()[:16]}"
    rows["prediction"] = answer
    rows["pred_title"] = parsed.title
    rows["pred_category"] = parsed.category
    rows["pred_full_price"] = np.nan if parsed.full_price is None else parsed.full_price
    rows["parse_error"] = parsed.error
    rows["load_error"] = None
    return rows[list(OUTPUT_COLUMNS)]


def _cache_path(cache_dir: Path, content_key: str) -> Path:
    return cache_dir / f"{content_key}.parquet"


def unscorable_message(broken: list[BrokenCheckpoint]) -> str:
    """Why nothing could be scored: every broken contestant with its reason, or that none was given at all."""
    reasons = "; ".join(f"{b.name}: {b.reason}" for b in broken)
    return f"no contestant could be scored: {reasons or 'none given'}"


def ranking_split(settings: EvalSection) -> str:
    """The split that ranks the contestants: `select_on` when set, else the reported split itself."""
    return settings.select_on or settings.split


def evaluate(
    dataset: Any,
    checkpoint_paths: list[str],
    output_dir: str | Path,
    settings: EvalSection,
    *,
    trivial: TrivialPredictor | None = None,
    plots: bool = True,
    selection: Any | None = None,
) -> EvaluationResult:
    """Score every checkpoint below `checkpoint_paths` on `dataset` (prompt-only prepared rows); write the leaderboard
    to `output_dir`, a local folder or a bucket URI.

    With `selection` (the prompt-only rows of `settings.select_on`), the contestants are ranked on it instead, and
    only the chosen checkpoint, the base model and the trivial predictor are then scored on `dataset`: the reported
    figures cannot have influenced the choice, and no other checkpoint is scored on the held-out split at all.
    """
    check_metric_name(settings.primary_metric)
    if (selection is not None) != (ranking_split(settings) != settings.split):
        raise ValueError(
            f"evaluate: select_on={settings.select_on!r}, split={settings.split!r} needs a selection dataset "
            f"exactly when the two differ"
        )
    if not is_uri(str(output_dir)):
        return _evaluate_into(
            dataset,
            checkpoint_paths,
            Path(output_dir),
            settings,
            trivial=trivial,
            plots=plots,
            selection=selection,
        )
    target = location(str(output_dir))
    with tempfile.TemporaryDirectory(prefix="phi3v-evaluation-") as staged:
        staging = Path(staged)
        download_tree(target.join("cache"), staging / "cache")
        result = _evaluate_into(
            dataset, checkpoint_paths, staging, settings, trivial=trivial, plots=plots, selection=selection
        )
        upload_tree(staging, target)  # every file: a re-run may rewrite the leaderboard at the same size
    result.files = {
        name: target.join(Path(path).relative_to(staging).as_posix()) for name, path in result.files.items()
    }
    return result


@dataclass
class _Ledger:
    """What happened to the contestants across the splits of one evaluation: broken, scored now, from the cache."""

    broken: list[BrokenCheckpoint]
    scored_now: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)


Groups = dict[str, tuple[ModelSection, list[ContestantSpec]]]


def _score_split(
    dataset: Any,
    split: str,
    groups: Groups,
    cache_root: Path,
    settings: EvalSection,
    trivial: TrivialPredictor | None,
    ledger: _Ledger,
    label: str = "",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every contestant of `groups` (and the trivial one) on one split: (predictions with a `split` column, one
    scores row per contestant that loaded). `label` is appended to the names recorded in the ledger."""
    truth = dataset.select_columns(TRUTH_COLUMNS).to_pandas()
    if truth.empty:
        raise CheckpointError(f"evaluation split {split} is empty: nothing to score the checkpoints on")
    cache_dir = cache_root / evaluation_signature(truth, settings)
    cache_dir.mkdir(parents=True, exist_ok=True)

    frames: list[pd.DataFrame] = []
    kinds: dict[str, str] = {TRIVIAL_NAME: "trivial"}
    for base, specs in groups.values():
        kinds.update({spec.name: spec.kind for spec in specs})
        pending = [spec for spec in specs if not _cache_path(cache_dir, spec.content_key).is_file()]
        failed: set[str] = set()
        if pending:
            fresh = run_predictor(dataset, base, pending, settings)
            for spec in pending:
                rows = fresh[fresh["checkpoint"] == spec.name]
                errors = rows["load_error"].dropna().unique().tolist()
                if errors:
                    ledger.broken.append(BrokenCheckpoint(spec.name, Path(spec.path or "."), str(errors[0])))
                    frames.append(rows)  # kept in predictions.parquet with the reason, never scored
                    failed.add(spec.name)
                    continue
                # One row per product, not merely as many rows as products: a batch retried after a lost node
                # must not leave one product scored twice and another missing.
                if sorted(map(str, rows["product_code"])) != sorted(map(str, truth["product_code"])):
                    raise RuntimeError(
                        f"{spec.name}: {len(rows)} predictions do not cover the {len(truth)} products once each"
                    )
                rows.to_parquet(_cache_path(cache_dir, spec.content_key), index=False)
                ledger.scored_now.append(spec.name + label)
        for spec in specs:
            if spec.name in failed:
                continue
            if spec not in pending:
                ledger.reused.append(spec.name + label)
            cached = pd.read_parquet(_cache_path(cache_dir, spec.content_key))
            cached["checkpoint"] = spec.name  # the same content may have moved since it was scored
            frames.append(cached)
    if settings.include_trivial and trivial is not None:
        frames.append(trivial_rows(trivial, truth))
    predictions = (
        pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(OUTPUT_COLUMNS))
    )
    predictions["split"] = split
    scorable = predictions[predictions["load_error"].isna()]
    if scorable.empty:
        return predictions, pd.DataFrame(columns=["checkpoint", "kind"])
    scores = score_by_contestant(scorable)
    scores.insert(1, "kind", scores["checkpoint"].map(kinds).fillna("lora"))
    return predictions, scores


def report_groups(groups: Groups, chosen: str | None) -> Groups:
    """The contestants scored on the report split once the choice is made: the chosen checkpoint and the bases."""
    kept: Groups = {}
    for key, (base, specs) in groups.items():
        keep = [spec for spec in specs if spec.name == chosen or spec.kind == "base"]
        if keep:
            kept[key] = (base, keep)
    return kept


def _evaluate_into(
    dataset: Any,
    checkpoint_paths: list[str],
    output: Path,
    settings: EvalSection,
    *,
    trivial: TrivialPredictor | None,
    plots: bool,
    selection: Any | None = None,
) -> EvaluationResult:
    """`evaluate` with a local output folder."""
    checkpoints, broken = discover_checkpoints(checkpoint_paths)
    ledger = _Ledger(broken)
    groups = contestant_specs(checkpoints, settings.include_base)
    ranked_on = ranking_split(settings)
    predictions, scores = _score_split(
        dataset if selection is None else selection,
        ranked_on,
        groups,
        output / "cache",
        settings,
        trivial,
        ledger,
    )
    if scores.empty:
        raise CheckpointError(unscorable_message(ledger.broken))
    leaderboard = label_split(rank_contestants(scores, settings.primary_metric), ranked_on)
    if selection is not None:
        # The choice is fixed before any product of the report split is generated for.
        chosen = chosen_checkpoint(leaderboard)
        reported, report_scores = _score_split(
            dataset,
            settings.split,
            report_groups(groups, chosen),
            output / "cache",
            settings,
            trivial,
            ledger,
            label=f" ({settings.split})",
        )
        leaderboard = attach_report(leaderboard, report_scores, settings.split)
        predictions = pd.concat([predictions, reported], ignore_index=True)
    leaderboard.attrs["primary_metric"] = settings.primary_metric

    files = write_leaderboard(leaderboard, output, settings.primary_metric)
    files["predictions"] = output / "predictions.parquet"
    predictions.to_parquet(files["predictions"], index=False)
    files["broken"] = output / "broken.json"
    files["broken"].write_text(
        json.dumps(
            [{"name": b.name, "path": str(b.path), "reason": b.reason} for b in ledger.broken], indent=2
        )
    )
    if plots:
        scorable = predictions[predictions["load_error"].isna()]
        for path in write_plots(leaderboard, scorable, settings.primary_metric, output):
            files[path.stem] = path
    return EvaluationResult(
        leaderboard,
        predictions,
        ledger.broken,
        ledger.scored_now,
        ledger.reused,
        files,
        ranked_on,
        settings.split,
    )
