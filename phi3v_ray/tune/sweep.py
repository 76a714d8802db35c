"""Ray Tune sweep in which every trial is a full multi-worker TorchTrainer run (Train V2 pattern).

Tune no longer accepts a V2 trainer directly, so each trial is a small *function trainable* (the trial driver): it
resolves its sampled values into a full ExperimentConfig, builds one TorchTrainer with TuneReportCallback (rank 0's
metrics reach Tune, ASHA sees val_loss), fits it and reports one closing result marking the trial finished. The
driver reserves only `tune.trial_driver_cpus`; the workers reserve their own placement group, which is why
concurrency is capped by phi3v_ray.tune.resources and not left to Tune.

Layout: `<storage_path>/<tune.name>/` holds Tune's experiment state, one Train run per trial named after the trial
id (so a restarted trial resumes from its own latest checkpoint), `wandb/` and `sweep_results.csv`. The storage path
may be a bucket URI: every location here is a phi3v_ray.storage Location, and Ray gets its path plus its filesystem.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from phi3v_ray.config import ExperimentConfig, config_from_dict
from phi3v_ray.errors import ConfigError
from phi3v_ray.storage import Location
from phi3v_ray.train.faults import PlantedFailure
from phi3v_ray.train.launcher import check_storage_writable, ray_filesystem, ray_storage, storage_location
from phi3v_ray.train.schedule import planned_steps
from phi3v_ray.tune import resources
from phi3v_ray.tune.results import (
    FAILED,
    FINISHED,
    FINISHED_KEY,
    RESULTS_FILE,
    STEP_KEY,
    STOPPED_EARLY,
    VAL_STEP_KEY,
    TrialRow,
    format_table,
    log_sweep_summary,
    sort_rows,
    trial_row,
    write_results_csv,
)
from phi3v_ray.tune.space import SearchSpace, parse_search_space

# Searching these changes the prepared examples, so those trials cannot share one prepared dataset.
PREPARED_DATA_KEYS = ("data", "model.num_crops", "model.preset", "model.path", "model.tokenizer")


@dataclass
class SweepOutcome:
    """What a sweep left behind: one row per trial, the CSV, the printed table, and how long it took."""

    sweep_dir: Location
    rows: list[TrialRow]
    results_csv: Location
    table: str
    keys: list[str]
    resumed: bool
    concurrency: int
    wall_s: float
    summary_run_id: str | None = None


def sweep_directory(config: ExperimentConfig) -> Location:
    """`<storage_path>/<tune.name>`: a bucket prefix or an absolute local folder. Never a Path: `Path("s3://b/x")` is
    the relative local folder `s3:/b/x`, where a sweep's checkpoints once landed instead of the bucket."""
    return storage_location(config).join(config.tune.name)


def wandb_group(config: ExperimentConfig) -> str:
    """All trial runs and the summary share this W&B group: `wandb.group` if set, else the sweep's name."""
    return config.wandb.group or config.tune.name


def wandb_directory(config: ExperimentConfig) -> str:
    """Where every trial's W&B files go: `wandb.dir` if set, else `<sweep dir>/wandb` (one place to read/sync)."""
    return config.wandb.dir or sweep_directory(config).join("wandb").uri


def shares_prepared_data(space: SearchSpace) -> bool:
    """True unless the space searches a key that changes the prepared examples (then each trial prepares its own)."""
    return not any(key == p or key.startswith(p + ".") for key in space.keys for p in PREPARED_DATA_KEYS)


def trial_config(
    base: ExperimentConfig, space: SearchSpace, sampled: Mapping[str, Any], trial_id: str
) -> ExperimentConfig:
    """The trial's full config: sampled + derived values, its run named after the trial, in the sweep's folders."""
    resolved = space.resolve(base, sampled)
    raw = resolved.to_plain()
    raw["run"]["name"] = trial_id
    raw["run"]["storage_path"] = sweep_directory(base).uri
    raw["wandb"]["group"] = wandb_group(base)
    raw["wandb"]["dir"] = wandb_directory(base)
    return config_from_dict(raw, source=f"trial {trial_id}")


def run_trial(
    sampled: dict[str, Any],
    *,
    base: dict[str, Any],
    space: SearchSpace,
    datasets: Mapping[str, Any] | None,
    planted_failure: PlantedFailure | None = None,
) -> None:
    """Tune function trainable: one TorchTrainer run for this trial's values, then a closing `finished` result."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from phi3v_ray.train.launcher import build_trainer
    from phi3v_ray.train.placement import fit_within_capacity

    trial_id = tune.get_context().get_trial_id()
    config = trial_config(config_from_dict(base), space, sampled, trial_id)
    if datasets is None:
        from phi3v_ray.data.datasets import build_train_datasets

        datasets = build_train_datasets(config)
    trainer = build_trainer(
        config,
        datasets,
        callbacks=[TuneReportCallback()],
        run_name=trial_id,
        trial=trial_id,
        planted_failure=planted_failure,
    )
    result = fit_within_capacity(
        trainer, config, trial_id
    )  # sweep_results.csv's reason names what it waited for
    if result.error is not None:
        raise result.error
    tune.report(_closing_result(result, config))


def _closing_result(result: Any, config: ExperimentConfig) -> dict[str, Any]:
    """The marker result: FINISHED_KEY, plus the best metric so Tune's strict metric check and searchers accept it."""
    metric = config.tune.metric
    scores = [m[metric] for _, m in (result.best_checkpoints or []) if metric in m]
    last = dict(result.metrics or {})
    if scores:
        best = min(scores) if config.tune.mode == "min" else max(scores)
    else:
        best = last.get(metric, math.nan)
    closing: dict[str, Any] = {FINISHED_KEY: True, metric: float(best)}
    # No VAL_STEP_KEY: ASHA skips results without its time attribute, so this one never counts as a rung.
    # Last training figures too, so Tune's progress table does not show a finished trial with blank columns.
    closing.update({key: last[key] for key in (STEP_KEY, "epoch", "loss", "lr") if key in last})
    return closing


def prepare_shared_datasets(config: ExperimentConfig, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Compute the train/val examples once into the prepared cache; every trial then only reads that cache."""
    from phi3v_ray.data.datasets import build_train_datasets, write_prepared_split

    for split in ("train", "val"):
        entry, summary, reused = write_prepared_split(config, split, prompt_only=False)
        echo(f"prepared {split}: {'reused' if reused else 'computed'} {entry.directory} ({summary})")
    return build_train_datasets(config)


def build_scheduler(config: ExperimentConfig, total_steps: int | None) -> Any:
    """ASHA on the validation metric, or FIFO.

    Time is `val_step`, the step of the latest validation, so a rung is judged on a fresh validation and
    grace_period counts validations (grace_period × eval_every steps). max_t stays below the final step, so no
    trial is stopped at its last validation (it would read as stopped early although it trained to the end);
    stop_last_trials is off for the same reason.
    """
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    tune_section = config.tune
    if tune_section.scheduler == "fifo":
        return FIFOScheduler()
    grace_steps = tune_section.grace_period * config.run.eval_every
    max_t = max(grace_steps, (total_steps - 1) if total_steps else 10**6)
    return ASHAScheduler(
        time_attr=VAL_STEP_KEY,
        grace_period=grace_steps,
        reduction_factor=tune_section.reduction_factor,
        max_t=max_t,
        stop_last_trials=False,
    )


def build_search_alg(config: ExperimentConfig, max_concurrent: int = 0) -> Any:
    """Random and grid use Tune's variant generator (seeded by run.seed); optuna uses TPE, seeded the same way.

    The variant generator must carry the concurrency cap itself: Tune ignores `max_concurrent_trials` for a
    generator passed in as `search_alg` (it only wraps `Searcher`s such as Optuna in a ConcurrencyLimiter).
    """
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if config.tune.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=config.run.seed)
    return BasicVariantGenerator(random_state=config.run.seed, max_concurrent=max_concurrent)


def run_sweep(
    config: ExperimentConfig,
    *,
    datasets: Mapping[str, Any] | None = None,
    resume: bool | None = None,
    echo: Callable[[str], None] = print,
    planted_failure: PlantedFailure | None = None,
) -> SweepOutcome:
    """Validate, size, prepare data once, run (or resume) the sweep, then write results and the W&B summary.

    `resume=None` resumes when the sweep directory holds an interrupted sweep and starts fresh otherwise;
    `True` insists on resuming, `False` refuses to touch an existing sweep. `planted_failure` is for tests only
    (phi3v_ray.train.faults): every trial's workers receive it and the trials it names fail on purpose.
    """
    from ray import tune

    from phi3v_ray.ray_session import connect

    space = parse_search_space(config)
    sweep_dir = sweep_directory(config)
    check_storage_writable(sweep_dir)
    resuming = _resuming(sweep_dir, resume)
    connect()
    cluster, nodes = resources.live_cluster()
    need = resources.trial_need(config, cluster)
    concurrency = resources.max_concurrent_trials(
        config,
        cluster,
        nodes,
        reserve_cpus=resources.DATA_RESERVE_CPUS,
        may_grow=bool(os.environ.get("RAY_ADDRESS")),
    )
    shared = shares_prepared_data(space)
    if datasets is None and shared:
        datasets = prepare_shared_datasets(config, echo)
    train_rows = int(datasets["train"].count()) if datasets is not None and not config.run.max_steps else None

    total = space.grid_size() * config.tune.num_samples
    echo(
        f"sweep {config.tune.name}: {total} trial(s), {config.tune.search_alg} search over {space.keys}, "
        f"scheduler {config.tune.scheduler}; {need.describe()}; up to {concurrency} at once"
        + (" (resuming)" if resuming else "")
    )
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            base=config.to_plain(),
            space=space,
            datasets=datasets if shared else None,
            planted_failure=planted_failure,
        ),
        resources.driver_resources(need),
    )
    started = time.perf_counter()
    if resuming:
        tuner = tune.Tuner.restore(
            sweep_dir.path,
            storage_filesystem=ray_filesystem(sweep_dir),
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=True,
        )
    else:
        tuner = new_tuner(config, space, trainable, concurrency, planned_steps(config, train_rows))
    grid = tuner.fit()
    wall_s = time.perf_counter() - started
    return finish_sweep(
        config, space, grid, resumed=resuming, concurrency=concurrency, wall_s=wall_s, echo=echo
    )


def _resuming(sweep_dir: Location, resume: bool | None) -> bool:
    """Whether this run resumes the sweep in `sweep_dir`, or a ConfigError when the resume policy forbids both."""
    from ray import tune

    can_restore = tune.Tuner.can_restore(sweep_dir.path, storage_filesystem=ray_filesystem(sweep_dir))
    if resume is True and not can_restore:
        raise ConfigError(f"tune.name: nothing to resume in {sweep_dir} (no Tune experiment state there)")
    if resume is False and can_restore:
        raise ConfigError(
            f"tune.name: {sweep_dir} already holds a sweep; resume it (--resume) or pick another tune.name"
        )
    return bool(can_restore and resume is not False)


def new_tuner(
    config: ExperimentConfig, space: SearchSpace, trainable: Any, concurrency: int, total_steps: int | None
) -> Any:
    """A fresh Tuner: the search, scheduler and concurrency cap from the config; no Tune-level retries."""
    from ray import tune

    return tune.Tuner(
        trainable,
        param_space=space.param_space(),
        tune_config=tune.TuneConfig(
            metric=config.tune.metric,
            mode=config.tune.mode,
            num_samples=config.tune.num_samples,
            max_concurrent_trials=concurrency,
            search_alg=build_search_alg(config, concurrency),
            scheduler=build_scheduler(config, total_steps),
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(
            name=config.tune.name,
            **ray_storage(sweep_directory(config).parent),
            # Worker and node failures are retried inside the trial (Train's FailureConfig: run.max_failures), and
            # the trial's driver lives on the head (DRIVER_RESOURCE). A Tune-level retry would rerun a trial whose
            # own code failed, the same way, from its last checkpoint.
            failure_config=tune.FailureConfig(max_failures=0),
            verbose=1,
        ),
    )


def saved_trial_states(sweep_dir: Location) -> dict[str, tuple[str, str]]:
    """trial path → (trial id, state) as Tune saved them (RUNNING/PENDING survive an interrupt there, not in memory)."""
    from ray.tune import ExperimentAnalysis

    try:
        analysis = ExperimentAnalysis(sweep_dir.path, storage_filesystem=ray_filesystem(sweep_dir))
    except Exception:  # noqa: BLE001 - no saved state (e.g. nothing ran): statuses come from results alone
        return {}
    return {os.path.normpath(str(trial.path)): (trial.trial_id, trial.status) for trial in analysis.trials}


# How each way a trial can end is recorded in its W&B run (exit code 0 unless it failed).
ENDED_STATES = {FINISHED: 0, STOPPED_EARLY: 0, FAILED: 1}


def seal_trial_run(
    config: ExperimentConfig, space: SearchSpace, sampled: Mapping[str, Any], row: TrialRow
) -> None:
    """A trial that ASHA stopped or that failed had its workers killed: give its W&B run its end from here.

    Interrupted trials are left open: a resumed sweep continues the same run.
    """
    from phi3v_ray.train.launcher import seal_training_run

    if row.status not in ENDED_STATES:
        return
    trial = trial_config(config, space, sampled, row.trial_id)
    seal_training_run(
        trial,
        run_name=row.trial_id,
        trial=row.trial_id,
        end_state=row.status,
        exit_code=ENDED_STATES[row.status],
    )


def finish_sweep(
    config: ExperimentConfig,
    space: SearchSpace,
    grid: Any,
    *,
    resumed: bool,
    concurrency: int,
    wall_s: float,
    echo: Callable[[str], None] = print,
) -> SweepOutcome:
    """Turn Tune's ResultGrid into sweep_results.csv, a printed table and the W&B sweep summary run."""
    metric, mode = config.tune.metric, config.tune.mode
    sweep_dir = sweep_directory(config)
    states = saved_trial_states(sweep_dir)
    rows = []
    for result in grid:
        sampled = {key: value for key, value in (result.config or {}).items() if key in space.keys}
        trial_id, state = states.get(os.path.normpath(str(result.path)), (None, None))
        row = trial_row(result, space.full_sample(sampled), metric, mode, state, trial_id, storage=sweep_dir)
        seal_trial_run(config, space, sampled, row)
        rows.append(row)
    rows = sort_rows(rows, mode)
    csv_path = write_results_csv(rows, sweep_dir.join(RESULTS_FILE), space.keys, metric)
    table = format_table(rows, space.keys, metric)
    echo(table)
    echo(f"results: {csv_path}")
    summary_id = log_sweep_summary(
        rows,
        space.keys,
        metric,
        mode,
        wandb_section=config.wandb,
        group=wandb_group(config),
        directory=wandb_directory(config),
        run_id=f"{config.tune.name}-summary",
    )
    return SweepOutcome(
        sweep_dir=sweep_dir,
        rows=rows,
        results_csv=csv_path,
        table=table,
        keys=space.keys,
        resumed=resumed,
        concurrency=concurrency,
        wall_s=wall_s,
        summary_run_id=summary_id,
    )
