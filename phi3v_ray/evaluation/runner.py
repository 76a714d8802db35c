"""Run one evaluation from an experiment config: prepared split → every contestant scored → files + W&B.

Shared by `phi3v-ray evaluate` and the demo, so both produce the same leaderboard from the same steps.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from phi3v_ray.config import ExperimentConfig


def run_evaluation(
    config: ExperimentConfig, *, plots: bool = True, echo: Callable[[str], None] = print
) -> dict[str, Any]:
    """Score config.evaluate.checkpoints on config.evaluate.split; returns leaderboard, markdown and file paths."""
    import ray

    from phi3v_ray.data.pipeline import build_prepared_dataset, load_split_rows
    from phi3v_ray.evaluation.job import EvaluationSettings, evaluate
    from phi3v_ray.evaluation.trivial import TrivialPredictor
    from phi3v_ray.evaluation.wandb_report import log_evaluation

    section = config.evaluate
    output_dir = Path(section.output_dir or Path(section.checkpoints[0]) / "evaluation")
    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    dataset, _rejects = build_prepared_dataset(config, section.split, prompt_only=True)
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
        EvaluationSettings.from_section(section),
        trivial=trivial,
        plots=plots,
    )
    echo(f"scored now: {len(result.scored_now)}, reused from cache: {len(result.reused)}")
    for broken in result.broken:
        echo(f"BROKEN {broken.name}: {broken.reason}")
    samples = dataset.limit(8).take_all()
    group = config.wandb.group or Path(section.checkpoints[0]).resolve().name
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
