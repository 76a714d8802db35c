"""Run one evaluation from an experiment config: prepared split → every contestant scored → files + W&B.

Shared by `phi3v-ray evaluate` and the demo, so both produce the same leaderboard from the same steps. Without an
experiment file, `checkpoints_model_section` supplies the `model:` section the checkpoints were trained with, so the
evaluation split is preprocessed as their base model expects.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from phi3v_ray.config import ExperimentConfig
from phi3v_ray.errors import CheckpointError, ConfigError
from phi3v_ray.storage import location


def checkpoints_model_section(paths: list[str]) -> dict[str, Any]:
    """The `model:` section (as a plain dict) of the first usable checkpoint below `paths`; {} when none is usable."""
    from phi3v_ray.evaluation.discovery import discover_checkpoints

    good, _ = discover_checkpoints(paths)
    return good[0].base_model.model_dump(mode="json") if good else {}


def check_has_checkpoints(config: ExperimentConfig, source: str) -> None:
    """An evaluation needs at least one sweep or checkpoint directory; say where the empty list came from."""
    if not config.evaluate.checkpoints:
        raise ConfigError(
            f"{source}: evaluate.checkpoints is empty; pass --checkpoints runs/<sweep> (e.g. runs/demo-sweep) or list "
            f"sweep or checkpoint directories under evaluate.checkpoints"
        )


def check_some_checkpoint_usable(config: ExperimentConfig) -> int:
    """Before any work: at least one requested checkpoint must be loadable, or the leaderboard would hold only the
    base model and the trivial predictor. Returns how many are usable (their weights are not loaded here)."""
    from phi3v_ray.evaluation.discovery import discover_checkpoints

    good, broken = discover_checkpoints(config.evaluate.checkpoints)
    if not good:
        reasons = "; ".join(f"{item.name}: {item.reason}" for item in broken)
        raise CheckpointError(
            f"none of the {len(broken)} requested checkpoint(s) can be evaluated: {reasons}"
        )
    return len(good)


def trained_rows(leaderboard: Any) -> int:
    """How many leaderboard rows are trained checkpoints (not the base model or the trivial predictor)."""
    return int(leaderboard["kind"].isin(["lora", "full"]).sum())


def default_output_dir(first_checkpoint: str) -> str:
    """`<first checkpoint path>/evaluation`: beside the checkpoints, in the same bucket when they are in one."""
    where = location(first_checkpoint)
    return where.join("evaluation").uri if where.is_remote else str(Path(first_checkpoint) / "evaluation")


def run_evaluation(
    config: ExperimentConfig, *, plots: bool = True, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Score config.evaluate.checkpoints on config.evaluate.split (ranked on evaluate.select_on when that names
    another split); returns leaderboard, markdown and file paths."""
    from phi3v_ray.data.datasets import build_prepared_dataset
    from phi3v_ray.data.split import load_split_rows
    from phi3v_ray.evaluation.scoring import evaluate
    from phi3v_ray.evaluation.trivial import TrivialPredictor
    from phi3v_ray.evaluation.wandb_report import log_evaluation
    from phi3v_ray.ray_session import connect

    section = config.evaluate
    output_dir = section.output_dir or default_output_dir(section.checkpoints[0])
    connect(log_to_driver=False)
    dataset, _rejects = build_prepared_dataset(config, section.split, prompt_only=True)
    selection = None
    if section.select_on and section.select_on != section.split:
        selection, _rejects = build_prepared_dataset(config, section.select_on, prompt_only=True)
    trivial = None
    if section.include_trivial:
        train_rows = load_split_rows(config.data.catalog_dir, "train")
        trivial = TrivialPredictor.fit(
            train_rows["title"].tolist(),
            train_rows["category3_code"].tolist(),
            train_rows["full_price"].tolist(),
        )
    result = evaluate(
        dataset,
        section.checkpoints,
        output_dir,
        section,
        trivial=trivial,
        plots=plots,
        selection=selection,
    )
    echo(f"scored now: {len(result.scored_now)}, reused from cache: {len(result.reused)}")
    for broken in result.broken:
        echo(f"BROKEN {broken.name}: {broken.reason}")
    samples = dataset.limit(8).take_all()
    group = config.wandb.group or location(section.checkpoints[0]).name
    run_dir = log_evaluation(
        result.leaderboard,
        result.predictions,
        samples,
        section=config.wandb,
        group=group,
        directory=config.wandb.dir or str(output_dir),
        primary_metric=section.primary_metric,
    )
    files = dict(result.files)
    if run_dir is not None:
        files["wandb run"] = run_dir
    return {"result": result, "leaderboard": result.leaderboard, "markdown": result.markdown, "files": files}
