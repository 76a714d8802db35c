"""What one trial reserves, and how many trials the cluster can really run at once.

A trial is a Tune function trainable (its driver reserves `tune.trial_driver_cpus`) that launches a TorchTrainer
whose workers get their own placement group. Tune only knows about the driver, so if it starts more trials than
there is room for their workers, the drivers hold the CPUs the workers wait on and the sweep hangs. This module
computes the real per-trial need and caps concurrency by it, and refuses a sweep that can never be scheduled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from phi3v_ray.cluster import DRIVER_RESOURCE
from phi3v_ray.config import ExperimentConfig
from phi3v_ray.errors import ConfigError

# Fractional CPUs (0.25 per worker) add up with float error; treat 3.9999999 as 4.
_EPSILON = 1e-9
# Kept free of trials: Ray Data read/decode tasks feeding the workers need a CPU slot outside every placement group.
DATA_RESERVE_CPUS = 1.0


@dataclass(frozen=True)
class TrialNeed:
    """Resources held while one trial runs: its driver plus every Train worker."""

    driver_cpus: float
    num_workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    driver_on_head: bool = False  # the driver reserves DRIVER_RESOURCE (head only) instead of driver_cpus

    @property
    def cpus(self) -> float:
        """CPUs of the driver plus all workers."""
        return self.driver_cpus + self.num_workers * self.cpus_per_worker

    @property
    def gpus(self) -> float:
        """GPUs of all workers (the driver never holds a GPU)."""
        return self.num_workers * self.gpus_per_worker

    def describe(self) -> str:
        """`1.0 CPU (driver 0.5 + 2 workers × 0.25 CPU), 0 GPU` for messages and the sweep banner."""
        worker = f"{self.cpus_per_worker:g} CPU" + (
            f" + {self.gpus_per_worker:g} GPU" if self.gpus_per_worker else ""
        )
        driver = (
            f"driver on the head ({DRIVER_RESOURCE})"
            if self.driver_on_head
            else f"driver {self.driver_cpus:g} CPU"
        )
        return f"{self.cpus:g} CPU, {self.gpus:g} GPU per trial ({driver} + {self.num_workers} workers × {worker})"


def trial_need(config: ExperimentConfig, cluster: Mapping[str, float] | None = None) -> TrialNeed:
    """Per-trial need from `tune.trial_driver_cpus` and the `scaling` section (GPUs only when use_gpu).

    On a cluster whose head advertises DRIVER_RESOURCE the driver is pinned there and holds no CPU of the workers'.
    """
    scaling = config.scaling
    on_head = cluster is not None and float(cluster.get(DRIVER_RESOURCE, 0.0)) >= 1.0
    return TrialNeed(
        driver_cpus=0.0 if on_head else config.tune.trial_driver_cpus,
        num_workers=scaling.num_workers,
        cpus_per_worker=scaling.cpus_per_worker,
        gpus_per_worker=scaling.gpus_per_worker if scaling.use_gpu else 0.0,
        driver_on_head=on_head,
    )


def driver_resources(need: TrialNeed) -> dict[str, float]:
    """What `tune.with_resources` reserves for the trial's driver (workers reserve their own placement group)."""
    if need.driver_on_head:
        return {"cpu": 0, "gpu": 0, DRIVER_RESOURCE: 1}
    return {"cpu": need.driver_cpus, "gpu": 0}


def concurrent_capacity(
    need: TrialNeed,
    cluster: Mapping[str, float],
    nodes: Sequence[Mapping[str, float]] = (),
    reserve_cpus: float = 0.0,
) -> int:
    """How many trials fit at once; ConfigError with the numbers when not even one ever can.

    `cluster` is ray.cluster_resources(); `nodes` the per-node totals (a worker's bundle must fit on one node);
    `reserve_cpus` is kept free for work outside the trials (e.g. Ray Data tasks feeding the workers).
    """
    cpus = float(cluster.get("CPU", 0.0)) - reserve_cpus
    gpus = float(cluster.get("GPU", 0.0))
    _check_bundles_fit(need, nodes)
    limits = [math.floor(cpus / need.cpus + _EPSILON)]
    if need.driver_on_head:  # one unit of the head's driver resource per trial
        limits.append(math.floor(float(cluster.get(DRIVER_RESOURCE, 0.0)) + _EPSILON))
    if need.gpus > 0:
        limits.append(math.floor(gpus / need.gpus + _EPSILON))
    capacity = max(0, min(limits))
    if capacity == 0:
        reserve = f" after keeping {reserve_cpus:g} CPU free for data loading" if reserve_cpus else ""
        raise ConfigError(
            f"sweep can never be scheduled: one trial needs {need.describe()}, but the cluster has "
            f"{float(cluster.get('CPU', 0.0)):g} CPU and {gpus:g} GPU{reserve}; lower scaling.num_workers, "
            f"scaling.cpus_per_worker / gpus_per_worker or tune.trial_driver_cpus, or add nodes"
        )
    return capacity


def _reserve_note(cluster: Mapping[str, float], reserve_cpus: float) -> str:
    """Why fewer CPUs are available than the machine has: some are kept for Ray Data's loading tasks."""
    if not reserve_cpus:
        return ""
    return (
        f" of {float(cluster.get('CPU', 0.0)):g}: {reserve_cpus:g} CPU is kept free for Ray Data tasks that load "
        f"and decode the trials' batches"
    )


def max_concurrent_trials(
    config: ExperimentConfig,
    cluster: Mapping[str, float],
    nodes: Sequence[Mapping[str, float]] = (),
    reserve_cpus: float = 0.0,
    may_grow: bool = False,
) -> int:
    """`tune.max_concurrent_trials` if set and it fits, else the cluster's capacity; more than fits is refused.

    `may_grow` (a remote cluster with an autoscaler) trusts an explicit max_concurrent_trials and starts with one
    trial when nothing fits yet, since nodes are added only once trials ask for them.
    """
    need = trial_need(config, cluster)
    requested = config.tune.max_concurrent_trials
    if may_grow:
        try:
            capacity = concurrent_capacity(need, cluster, (), reserve_cpus)
        except ConfigError:
            capacity = 0
        return requested or max(1, capacity)
    capacity = concurrent_capacity(need, cluster, nodes, reserve_cpus)
    if requested is None:
        return capacity
    if requested > capacity:
        raise ConfigError(
            f"tune.max_concurrent_trials: {requested} trials at once need {requested * need.cpus:g} CPU and "
            f"{requested * need.gpus:g} GPU ({need.describe()}), but the cluster fits {capacity} "
            f"({float(cluster.get('CPU', 0.0)) - reserve_cpus:g} CPU, {float(cluster.get('GPU', 0.0)):g} GPU "
            f"available{_reserve_note(cluster, reserve_cpus)}); the extra trials' drivers would hold resources their workers wait on. "
            f"Set it to {capacity} or less, or leave it unset"
        )
    return requested


def live_cluster() -> tuple[dict[str, float], list[dict[str, float]]]:
    """The connected Ray cluster's total resources and each alive node's totals."""
    import ray

    nodes = [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]
    return dict(ray.cluster_resources()), nodes


def _check_bundles_fit(need: TrialNeed, nodes: Sequence[Mapping[str, float]]) -> None:
    """A worker's (or the driver's) reservation cannot be split across nodes: some node must hold it whole."""
    if not nodes:
        return
    biggest_cpu = max(float(n.get("CPU", 0.0)) for n in nodes)
    biggest_gpu = max(float(n.get("GPU", 0.0)) for n in nodes)
    if need.cpus_per_worker > biggest_cpu + _EPSILON or need.gpus_per_worker > biggest_gpu + _EPSILON:
        raise ConfigError(
            f"sweep can never be scheduled: one worker needs {need.cpus_per_worker:g} CPU and "
            f"{need.gpus_per_worker:g} GPU on a single node, but the largest node has {biggest_cpu:g} CPU and "
            f"{biggest_gpu:g} GPU; lower scaling.cpus_per_worker / gpus_per_worker"
        )
    if need.driver_cpus > biggest_cpu + _EPSILON:
        raise ConfigError(
            f"sweep can never be scheduled: the trial driver needs {need.driver_cpus:g} CPU on one node, "
            f"but the largest node has {biggest_cpu:g} CPU; lower tune.trial_driver_cpus"
        )
