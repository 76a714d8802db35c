"""Joining or starting Ray, with the one list of environment settings every Ray process must see.

Ray workers on a remote cluster do not inherit the driver's environment, so settings that change what a worker does
(W&B offline/quiet, DeepSpeed's accelerator, tokenizer threads) go in the job's runtime_env. Before this module each
caller of `ray.init` forwarded its own list (or none); now they all call `connect`.
"""

from __future__ import annotations

import json
import os
from typing import Any

# Non-secret settings forwarded to every Ray process; WANDB_API_KEY is forwarded by Ray itself and never copied here.
# The S3 endpoint and region go too, so a worker on another node reaches the same S3-compatible store (MinIO, R2,
# on-prem) as the driver; credentials never do: nodes take theirs from their instance profile or their own environment.
FORWARDED_ENV = (
    "WANDB_MODE",
    "WANDB_SILENT",
    "DS_ACCELERATOR",
    "TOKENIZERS_PARALLELISM",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)


# Set by Ray in the driver of a submitted job: the job's config, including the runtime_env it was submitted with.
JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def forwarded_env() -> dict[str, str]:
    """The FORWARDED_ENV variables set in this process, by name, less those the submitted job already sets.

    Inside `ray job submit` Ray refuses to start a driver whose runtime_env repeats an env var of the job's own
    (even with the same value), and the job's runtime_env already reaches every worker.
    """
    already = set(_job_env_vars())
    return {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ and name not in already}


def _job_env_vars() -> dict[str, str]:
    """env_vars of the submitted job this process is the driver of (empty outside a job)."""
    try:
        job_config = json.loads(os.environ.get(JOB_CONFIG_ENV) or "{}")
    except json.JSONDecodeError:
        return {}
    runtime_env = job_config.get("runtime_env") if isinstance(job_config, dict) else None
    env_vars = runtime_env.get("env_vars") if isinstance(runtime_env, dict) else None
    return env_vars if isinstance(env_vars, dict) else {}


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


def session_log_dir() -> str | None:
    """Where this Ray session's process logs are (workers, Ray Data, raylet), for telling the user; None without one.

    Ray has no public accessor for it; the node object's is used and any change in it only loses the hint.
    """
    try:
        import ray

        if not ray.is_initialized():
            return None
        node = ray._private.worker.global_worker.node  # noqa: SLF001 - see the docstring
        return str(node.get_logs_dir_path())
    except Exception:  # noqa: BLE001 - a hint, never a failure
        return None
