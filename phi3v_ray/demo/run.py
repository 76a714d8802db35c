"""The one-command demo: sample catalog → split → warm-started tiny base → prepared data → sweep → leaderboard.

Every stage is the same code the real path runs (Ray Data preprocessing, Ray Tune over multi-worker Ray Train +
DeepSpeed runs, W&B offline, batch evaluation); only the model is the tiny preset and the catalog is synthetic.
Stages whose outputs already exist under the output directory are reused, so a re-run after Ctrl-C continues.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from phi3v_ray.config import ExperimentConfig, apply_overrides, config_from_dict
from phi3v_ray.packaged import DEMO_EXPERIMENT, load_packaged_experiment, packaged_name


@dataclass
class DemoPlan:
    """The knobs of the demo; defaults fit a 2-core laptop in under 10 minutes."""

    out_dir: Path
    rows: int = 900
    trials: int = 4
    concurrent_trials: int = 2
    max_steps: int = 200
    warm_start_steps: int = 1000
    warm_start_examples: int = 1500
    eval_examples: int = 64
    seed: int = 0
    extra_overrides: list[str] = field(default_factory=list)


def demo_config(plan: DemoPlan) -> ExperimentConfig:
    """experiments/demo.yaml (as installed with the package) with the demo's paths, sweep size and base folded in."""
    raw = load_packaged_experiment(DEMO_EXPERIMENT)
    out = plan.out_dir.resolve()
    overrides = [
        f"data.catalog_dir={out / 'catalog'}",
        f"data.prepared_dir={out / 'prepared'}",
        f"data.max_train_examples={plan.rows}",
        f"data.max_eval_examples={plan.eval_examples}",
        f"model.path={out / 'base'}",
        f"run.storage_path={out / 'runs'}",
        f"run.max_steps={plan.max_steps}",
        f"run.seed={plan.seed}",
        f"wandb.dir={out / 'wandb'}",
        f"tune.num_samples={plan.trials}",
        f"tune.max_concurrent_trials={plan.concurrent_trials}",
        f"evaluate.output_dir={out / 'evaluation'}",
        f"evaluate.checkpoints=['{out / 'runs' / raw.get('tune', {}).get('name', 'sweep')}']",
        *plan.extra_overrides,
    ]
    return config_from_dict(apply_overrides(raw, overrides), source=packaged_name(DEMO_EXPERIMENT))


STAGES = 6


def _stage(number: int, title: str, echo: Callable[[str], None]) -> float:
    """Print a stage header; returns its start time."""
    echo(f"\n[{number}/{STAGES}] {title}")
    return time.perf_counter()


def run_demo(plan: DemoPlan, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every stage, print the leaderboard and where things are; returns paths and the leaderboard rows."""
    config = demo_config(plan)  # first: a missing or invalid demo.yaml fails before Ray, torch and any output
    plan.out_dir.resolve().mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    t0 = _stage(1, f"sample catalog: {plan.rows} products with generated photos", echo)
    _make_catalog(config, plan, echo)
    timings["catalog"] = time.perf_counter() - t0

    t0 = _stage(2, "warm-start the tiny base (stands in for a pretrained checkpoint; see README)", echo)
    _make_base(config, plan, echo)
    timings["warm_start"] = time.perf_counter() - t0

    _start_ray()
    t0 = _stage(3, "preprocess train/val/test once with Ray Data (uint8 HD canvases + token ids)", echo)
    _prepare_splits(config, echo)
    timings["prepare"] = time.perf_counter() - t0

    t0 = _stage(
        4,
        f"sweep: {plan.trials} trials x {config.scaling.num_workers} Ray Train workers (DeepSpeed ZeRO-"
        f"{config.deepspeed.zero_stage}, LoRA), {plan.concurrent_trials} at once, W&B offline",
        echo,
    )
    outcome = _sweep(config, echo)
    timings["sweep"] = time.perf_counter() - t0

    t0 = _stage(5, "evaluate every checkpoint + base + trivial predictor on held-out products", echo)
    from phi3v_ray.evaluation.from_config import run_evaluation

    evaluation = run_evaluation(config, echo=echo)
    timings["evaluate"] = time.perf_counter() - t0

    _stage(6, "results", echo)
    timings["total"] = time.perf_counter() - started
    echo(evaluation["markdown"])
    echo(f"\nsweep results: {outcome.results_csv}")
    for name, path in evaluation["files"].items():
        echo(f"{name}: {path}")
    echo(f"W&B offline runs: {config.wandb.dir} (upload later with `wandb sync <dir>/wandb/offline-run-*`)")
    echo("timings: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    return {"config": config, "sweep": outcome, "evaluation": evaluation, "timings": timings}


def _make_catalog(config: ExperimentConfig, plan: DemoPlan, echo: Callable[[str], None]) -> None:
    """Stage 1: draw the sample catalog (unless it exists) and split it by product title."""
    from tqdm import tqdm

    from phi3v_ray.data.split import split_catalog
    from phi3v_ray.data.synth import synth_catalog

    catalog = Path(config.data.catalog_dir)
    if not (catalog / "manifest.parquet").is_file():
        with tqdm(total=plan.rows, desc="drawing products", unit="img") as bar:
            synth_catalog(catalog, plan.rows, seed=plan.seed, progress=bar.update)
    else:
        echo(f"  reusing {catalog}")
    split_catalog(catalog, by=config.data.split_by, ratios=config.data.ratios)


def _make_base(config: ExperimentConfig, plan: DemoPlan, echo: Callable[[str], None]) -> None:
    """Stage 2: warm-start the tiny base into model.path (unless a saved one is there)."""
    from tqdm import tqdm

    from phi3v_ray.demo.warmstart import warm_start_tiny_base

    base = Path(config.model.path or plan.out_dir.resolve() / "base")
    if (base / "config.json").is_file():
        echo(f"  reusing {base}")
        return
    with tqdm(total=plan.warm_start_steps, desc="describe-the-object pretraining", unit="step") as bar:
        stats = warm_start_tiny_base(
            base,
            steps=plan.warm_start_steps,
            examples=plan.warm_start_examples,
            progress=lambda step, loss: (bar.update(1), bar.set_postfix(loss=f"{loss:.3f}")),
        )
    echo(
        f"  loss {stats['first_loss']:.2f} → {stats['last_loss']:.2f} in {stats['seconds']:.0f}s; saved {base}"
    )


def _start_ray() -> None:
    """Start a local Ray sized for the demo, unless this process already has one."""
    from phi3v_ray.ray_session import connect

    # Ray's CPU counts are logical slots: on a 2-core laptop, 4 slots let two tiny trials (driver + 2 workers
    # each at 0.25) run beside the Ray Data reader; the tiny model's workers spend much of a step in collectives.
    connect(num_cpus=max(4, os.cpu_count() or 1), log_to_driver=False)


def _prepare_splits(config: ExperimentConfig, echo: Callable[[str], None]) -> None:
    """Stage 3: write the prepared cache for train/val (with answers) and test (prompts only)."""
    from phi3v_ray.data.datasets import write_prepared_split

    for split, prompt_only in (("train", False), ("val", False), ("test", True)):
        _entry, summary, reused = write_prepared_split(config, split, prompt_only=prompt_only)
        echo(f"  {split}: {summary}" + (" (reused)" if reused else ""))


def _sweep(config: ExperimentConfig, echo: Callable[[str], None]) -> Any:
    """Stage 4: the Tune sweep (prints its own trial table); returns the sweep outcome."""
    from phi3v_ray.train.deepspeed import prebuild_cpu_comm_op
    from phi3v_ray.tune.sweep import run_sweep

    skipped = prebuild_cpu_comm_op()
    if skipped:
        echo(f"  DeepSpeed CPU comm op not prebuilt ({skipped}); workers will load it themselves")
    return run_sweep(config, echo=echo)


def verdict(leaderboard: Any) -> tuple[str, bool]:
    """Compare the best checkpoint with the trivial predictor on held-out category accuracy."""
    rows = leaderboard.to_dict("records") if hasattr(leaderboard, "to_dict") else list(leaderboard)
    trivial = [r for r in rows if r.get("kind") == "trivial"]
    trained = [r for r in rows if r.get("kind") in ("lora", "full")]
    if not trivial or not trained:
        return "could not compare with the trivial predictor (missing rows)", False
    best = max(trained, key=lambda r: r["category_accuracy"])
    lift = best["category_accuracy"] - trivial[0]["category_accuracy"]
    message = (
        f"best checkpoint {best['checkpoint']}: category accuracy {best['category_accuracy']:.2f} vs trivial "
        f"{trivial[0]['category_accuracy']:.2f} ({lift:+.2f})"
    )
    return message, lift > 0
