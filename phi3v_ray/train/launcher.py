"""Ray Train launcher: resources, failure policy and checkpoint retention come from the config, not the loop.

`build_trainer` is what both `phi3v-ray train` and the Tune trainable call; a sweep passes its own Train callbacks
(e.g. TuneReportCallback) and a run name equal to the trial id, and the loop never learns which of the two it is in.
Re-running with the same run name and storage path resumes from that run's latest checkpoint (Train V2).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from phi3v_ray.config import ExperimentConfig, check_fits_cluster
from phi3v_ray.errors import ConfigError
from phi3v_ray.storage import Location, location
from phi3v_ray.train.faults import PlantedFailure
from phi3v_ray.train.placement import CapacityError, fit_within_capacity


def local_capacity() -> tuple[float, float]:
    """(CPUs, GPUs) this run can use: the connected Ray cluster's, or this machine's before Ray starts."""
    import ray

    if ray.is_initialized():
        resources = ray.cluster_resources()
        return float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - a broken CUDA install means no usable GPU for this check
        gpus = 0
    return float(os.cpu_count() or 1), float(gpus)


def check_capacity(config: ExperimentConfig) -> None:
    """Fail fast (ConfigError naming scaling.num_workers) when the workers cannot all be placed.

    Skipped when the driver will connect to a remote cluster (RAY_ADDRESS set, Ray not yet started): its size is
    only known after connecting, and the autoscaler may grow it.
    """
    import ray

    if not ray.is_initialized() and os.environ.get("RAY_ADDRESS"):
        return
    cpus, gpus = local_capacity()
    check_fits_cluster(config, cpus=cpus, gpus=gpus)


def storage_location(config: ExperimentConfig) -> Location:
    """run.storage_path as a storage Location: a bucket URI, or a local path made absolute (Ray Train needs one,
    and a relative path would be read from each worker's cwd)."""
    return location(config.run.storage_path)


def storage_path(config: ExperimentConfig) -> str:
    """run.storage_path as one string: the URI, or the absolute local path."""
    return storage_location(config).uri


def ray_storage(where: Location) -> dict[str, Any]:
    """RunConfig arguments for a location: Ray Train/Tune get the path inside the filesystem plus the filesystem.

    A URI must never reach Ray as a bare string path: the endpoint override (MinIO, R2, the tests' emulator) lives
    only in our filesystem object. Local paths go as before (no filesystem), so local runs behave exactly as they did.
    """
    if where.is_remote:
        return {"storage_path": where.path, "storage_filesystem": where.filesystem}
    return {"storage_path": where.path}


def ray_filesystem(where: Location) -> Any:
    """The filesystem Tune's restore/analysis calls need beside a path: ours for a bucket, None for a local folder."""
    return where.filesystem if where.is_remote else None


def check_storage_writable(where: Location) -> None:
    """Write and delete a marker before any trial starts: a missing bucket, missing credentials or access denied
    surface now as one StorageError naming the URI, not as a failure deep inside a Ray worker."""
    if not where.is_remote:
        return
    marker = where.join(".phi3v-write-check")
    marker.write_bytes(b"ok")
    marker.delete()


def build_trainer(
    config: ExperimentConfig,
    datasets: Mapping[str, Any],
    callbacks: Sequence[Any] = (),
    *,
    run_name: str | None = None,
    trial: str | None = None,
    planted_failure: PlantedFailure | None = None,
) -> Any:
    """A TorchTrainer for this experiment over prepared `{"train", "val"}` datasets; call `.fit()` to run it.

    `planted_failure` is for tests only (see phi3v_ray.train.faults).
    """
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from phi3v_ray.train.loop import train_loop_per_worker

    missing = {"train", "val"} - set(datasets)
    if missing:
        raise ConfigError(f"datasets: missing {sorted(missing)} (build them with phi3v_ray.data.datasets)")
    scaling = config.scaling
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = scaling.gpus_per_worker
    train_rows = None if config.run.max_steps else int(datasets["train"].count())
    name = run_name or config.run.name
    loop_config = {
        "experiment": config.to_plain(),
        "trial": trial,
        "train_rows": train_rows,
        "run_name": name,
        "storage_path": storage_path(config),
        "planted_failure": planted_failure.to_plain() if planted_failure else None,
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker=resources,
            placement_strategy=scaling.placement_strategy,
        ),
        run_config=RunConfig(
            name=name,
            **ray_storage(storage_location(config)),
            checkpoint_config=CheckpointConfig(
                num_to_keep=config.run.keep_best,
                checkpoint_score_attribute="val_loss",
                checkpoint_score_order="min",
            ),
            failure_config=FailureConfig(
                max_failures=config.run.max_failures,
                controller_failure_limit=config.run.controller_failure_limit,
            ),
            callbacks=list(callbacks),
        ),
        datasets=dict(datasets),
        # Validation is sharded too: each worker scores its part and the loss is all-reduced.
        dataset_config=DataConfig(datasets_to_split=["train", "val"]),
    )


def seal_training_run(
    config: ExperimentConfig, *, run_name: str, trial: str | None, end_state: str, exit_code: int
) -> bool:
    """Close the W&B run of a training run whose workers are gone, if they could not (killed, stopped)."""
    from phi3v_ray.tracking import TrainingRun, seal_run

    location = TrainingRun.of(config.wandb, run_name=run_name, storage_path=storage_path(config), trial=trial)
    return seal_run(config.wandb, location, config.to_plain(), end_state=end_state, exit_code=exit_code)


def fit(config: ExperimentConfig) -> Any:
    """Check capacity, build the prepared datasets, train; returns the ray.train.Result."""
    check_capacity(config)
    check_storage_writable(storage_location(config))
    from phi3v_ray.data.datasets import build_train_datasets
    from phi3v_ray.ray_session import connect

    connect()  # RAY_ADDRESS picks a running cluster; otherwise a local one (after the capacity check)

    try:
        result = fit_within_capacity(
            build_trainer(config, build_train_datasets(config)), config, config.run.name
        )
    except CapacityError:
        seal_training_run(config, run_name=config.run.name, trial=None, end_state="failed", exit_code=1)
        raise
    failed = result.error is not None
    seal_training_run(
        config,
        run_name=config.run.name,
        trial=None,
        end_state="failed" if failed else "finished",
        exit_code=1 if failed else 0,
    )
    return result
