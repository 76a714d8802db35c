"""Waiting for room to (re)start the worker group is bounded, and running out of it says what was waited for.

After a lost node, Ray Train's controller tries again to place the worker group; each try waits
RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (60 s by default) for the resources, and `run.controller_failure_limit`
bounds the number of tries (30 by default: about half an hour for the autoscaler to replace a reclaimed spot node).
When the last try times out, Ray's error says "startup timed out ... waiting for N workers"; this module turns it
into one line that names the run, the resources each worker needs, how long it waited and what to change.
"""

from __future__ import annotations

import os
from typing import Any

from phi3v_ray.config import ExperimentConfig
from phi3v_ray.errors import UserError

START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
DEFAULT_START_TIMEOUT_S = 60.0  # Ray Train 2.60's default for START_TIMEOUT_ENV
_RAY_TIMEOUT_TEXT = "worker group startup timed out"


class CapacityError(UserError, RuntimeError):
    """The cluster did not have room for a run's workers within the wait its config allows."""


def _chain(error: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def is_placement_timeout(error: BaseException | None) -> bool:
    """True for Ray Train's 'gave up waiting for the worker group's resources', however deeply Ray wrapped it."""
    return error is not None and any(_RAY_TIMEOUT_TEXT in str(link).lower() for link in _chain(error))


def placement_timeout_message(config: ExperimentConfig, run_name: str) -> str:
    """One line: the run, what one worker needs, how many tries of how long, and the settings that change it."""
    scaling, limit = config.scaling, config.run.controller_failure_limit
    per_worker = f"{scaling.cpus_per_worker:g} CPU" + (
        f" + {scaling.gpus_per_worker:g} GPU" if scaling.use_gpu else ""
    )
    timeout_s = float(os.environ.get(START_TIMEOUT_ENV, DEFAULT_START_TIMEOUT_S))
    tries = limit + 1
    return (
        f"run {run_name}: gave up waiting for room for {scaling.num_workers} training workers of {per_worker} each "
        f"({scaling.placement_strategy}): {tries} attempt(s) of {timeout_s:g} s ({START_TIMEOUT_ENV}), "
        f"run.controller_failure_limit={limit}. The cluster lost capacity that did not come back (a node not "
        "replaced, no spot capacity). Raise run.controller_failure_limit (-1 waits forever) or add nodes; the "
        "same run.name resumes from its last checkpoint"
    )


def fit_within_capacity(trainer: Any, config: ExperimentConfig, run_name: str) -> Any:
    """`trainer.fit()`, with Ray Train's placement time-out (raised or returned in the Result) as a CapacityError."""
    try:
        result = trainer.fit()
    except Exception as error:
        if is_placement_timeout(error):
            raise CapacityError(placement_timeout_message(config, run_name)) from error
        raise
    if is_placement_timeout(result.error):
        raise CapacityError(placement_timeout_message(config, run_name)) from result.error
    return result
