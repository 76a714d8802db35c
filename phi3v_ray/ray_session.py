"""Joining or starting Ray, with the one list of environment settings every Ray process must see.

Ray workers on a remote cluster do not inherit the driver's environment, so settings that change what a worker does
(W&B offline/quiet, DeepSpeed's accelerator, tokenizer threads) go in the job's runtime_env. Before this module each
caller of `ray.init` forwarded its own list (or none); now they all call `connect`.
"""

from __future__ import annotations

import os
from typing import Any

# Non-secret settings forwarded to every Ray process; WANDB_API_KEY is forwarded by Ray itself and never copied here.
FORWARDED_ENV = ("WANDB_MODE", "WANDB_SILENT", "DS_ACCELERATOR", "TOKENIZERS_PARALLELISM")


def forwarded_env() -> dict[str, str]:
    """The FORWARDED_ENV variables set in this process, by name."""
    return {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}


def connect(
    *,
    address: str | None = None,
    num_cpus: float | None = None,
    log_to_driver: bool = True,
    include_dashboard: bool | None = None,
) -> bool:
    """Join the cluster at `address` (or RAY_ADDRESS), else start a local one; no-op when Ray already runs.

    Returns True when this call started or joined Ray, False when it was already initialised (whoever started it
    chose its settings, e.g. the test session's shared cluster).
    """
    import ray

    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"address": address, "log_to_driver": log_to_driver}
    if num_cpus is not None:
        options["num_cpus"] = num_cpus
    if include_dashboard is not None:
        options["include_dashboard"] = include_dashboard
    env = forwarded_env()
    if env:
        options["runtime_env"] = {"env_vars": env}
    ray.init(**options)
    return True
