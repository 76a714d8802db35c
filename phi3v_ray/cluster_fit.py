"""Does one trial of an experiment fit on a cluster's node types, and how many trials (and evaluation actors) at once?

Answers `phi3v-ray cluster check --experiment` offline, from the node types cluster.py reads out of the launcher
file: each trial is a driver bundle plus one bundle per Ray Train worker, packed first-fit decreasing onto the head
plus one worker type scaled to its max_workers. It also names every experiment location that is a local path on a
cluster with worker nodes (`local_locations`): the nodes share no disk, so those must be bucket URIs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from phi3v_ray.cluster import DRIVER_RESOURCE, NodeType, node_types
from phi3v_ray.errors import ConfigError

if TYPE_CHECKING:
    from phi3v_ray.config import ExperimentConfig

# Small float tolerance for fractional CPU requests (0.5 + 0.5 must fill 1 CPU exactly).
_EPS = 1e-9
# Upper bound on packing iterations: a request of 0.001 CPU on a huge cluster must still terminate quickly.
_MAX_PACKED_ITEMS = 10_000

Bundle = tuple[float, float]  # (CPUs, GPUs) that must land on one node


def _count_placeable(item: list[Bundle], nodes: list[NodeType], limit: int) -> int:
    """How many copies of `item` (a list of bundles, e.g. one trial) fit at once, first-fit decreasing per bundle.

    Bundles of one item may spread over nodes (Ray Train's PACK strategy is soft), but each bundle stays on one node.
    """
    free = [[float(node.cpus), float(node.gpus)] for node in nodes]
    ordered = sorted(item, key=lambda b: (b[1], b[0]), reverse=True)
    placed = 0
    while placed < limit:
        trial_free = [list(capacity) for capacity in free]
        for cpus, gpus in ordered:
            for capacity in trial_free:
                if capacity[0] + _EPS >= cpus and capacity[1] + _EPS >= gpus:
                    capacity[0] -= cpus
                    capacity[1] -= gpus
                    break
            else:
                return placed
        free = trial_free
        placed += 1
    return placed


def _cluster_at_max(head: NodeType, worker: NodeType | None) -> list[NodeType]:
    """The head plus `worker` scaled to its max_workers: the largest cluster made of that worker type."""
    return [head] + ([worker] * worker.max_workers if worker else [])


@dataclass
class Capacity:
    """How many copies of a request fit when the cluster is scaled up with one worker type."""

    node_type: str
    nodes: int
    per_node: int
    at_once: int


@dataclass
class ExperimentFit:
    """The answer printed by `phi3v-ray cluster check --experiment`: per-trial need and how many run at once."""

    trial_bundles: list[Bundle]
    trial_capacity: list[Capacity]
    trials_at_once: int
    concurrency_limit: int
    actor_bundle: Bundle
    num_actors: int
    actor_capacity: list[Capacity]
    warnings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable report lines, one fact each."""
        driver, workers = self.trial_bundles[0], self.trial_bundles[1:]
        cpus = sum(b[0] for b in self.trial_bundles)
        gpus = sum(b[1] for b in self.trial_bundles)
        where = f"driver {_num(driver[0])} CPU" if driver[0] else "driver on the head"
        out = [
            f"one trial needs {_num(cpus)} CPU, {_num(gpus)} GPU: {where} + "
            f"{len(workers)} workers x ({_num(workers[0][0])} CPU, {_num(workers[0][1])} GPU)"
        ]
        for cap in self.trial_capacity:
            out.append(
                f"  on {cap.node_type} x{cap.nodes}: {cap.at_once} trial(s) at once ({cap.per_node} per node)"
            )
        out.append(
            f"sweep: {self.trials_at_once} trial(s) at once (num_samples/max_concurrent_trials allow "
            f"{self.concurrency_limit})"
        )
        out.append(
            f"evaluation: {self.num_actors} actor(s) x ({_num(self.actor_bundle[0])} CPU, "
            f"{_num(self.actor_bundle[1])} GPU); at most "
            + ", ".join(f"{cap.at_once} on {cap.node_type} x{cap.nodes}" for cap in self.actor_capacity)
        )
        out.extend(f"warning: {text}" for text in self.warnings)
        return out


def _num(value: float) -> str:
    """Print 4.0 as 4 and 0.5 as 0.5."""
    return f"{value:g}"


def check_experiment_fits(cluster_cfg: dict[str, Any], experiment_cfg: ExperimentConfig) -> ExperimentFit:
    """Raise ConfigError (with the numbers) unless one trial and one evaluation actor fit this cluster."""
    types = node_types(cluster_cfg)
    head = next(t for t in types if t.is_head)
    workers = [t for t in types if not t.is_head]
    scaling, tune, evaluate = experiment_cfg.scaling, experiment_cfg.tune, experiment_cfg.evaluate

    worker_gpus = scaling.gpus_per_worker if scaling.use_gpu else 0.0
    driver_cpus = 0.0 if head.driver_slots else tune.trial_driver_cpus  # a pinned driver holds no worker CPU
    trial: list[Bundle] = [(driver_cpus, 0.0)] + [(scaling.cpus_per_worker, worker_gpus)] * (
        scaling.num_workers
    )
    choices = [None] + workers if head.cpus > 0 else workers  # a CPU-0 head alone can host nothing
    trial_capacity = _capacities(trial, head, choices)
    best_trials = max((cap.at_once for cap in trial_capacity), default=0)
    if best_trials == 0:
        largest = max(types, key=lambda t: (t.gpus, t.cpus))
        raise ConfigError(
            f"scaling: one trial needs {_num(sum(b[0] for b in trial))} CPU and {_num(sum(b[1] for b in trial))} GPU "
            f"({scaling.num_workers} workers x ({_num(scaling.cpus_per_worker)} CPU, {_num(worker_gpus)} GPU) + "
            + (f"{_num(driver_cpus)} CPU trial driver" if driver_cpus else "a trial driver on the head")
            + "), which fits no node type even at max_workers; "
            f"the largest is {largest.name} ({largest.instance_type}: {largest.cpus} CPU, {largest.gpus} GPU, "
            f"up to {max(largest.max_workers, 1)} node(s))"
        )

    actor: Bundle = (evaluate.cpus_per_actor, evaluate.gpus_per_actor)
    actor_capacity = _capacities([actor], head, choices)
    best_actors = max((cap.at_once for cap in actor_capacity), default=0)
    if best_actors < evaluate.num_actors:
        raise ConfigError(
            f"evaluate.num_actors: {evaluate.num_actors} actor(s) of ({_num(actor[0])} CPU, {_num(actor[1])} GPU) "
            f"requested, but at most {best_actors} fit on one worker type at max_workers"
        )

    limit = min(tune.num_samples, tune.max_concurrent_trials or tune.num_samples)
    if head.driver_slots:
        limit = min(limit, head.driver_slots)
    warnings = []
    if not head.driver_slots and any(t.spot for t in workers):
        warnings.append(
            f"the head has no {DRIVER_RESOURCE} resource: Tune trial drivers and their Train controllers would run "
            f"on worker nodes, spot ones included; add `{DRIVER_RESOURCE}: 64` to the head's resources"
        )
    if not scaling.use_gpu and any(t.gpus for t in types):
        warnings.append("scaling.use_gpu is false: training would run on CPUs of a GPU cluster")
    if evaluate.gpus_per_actor == 0 and any(t.gpus for t in types):
        warnings.append("evaluate.gpus_per_actor is 0: evaluation would generate on CPUs")
    return ExperimentFit(
        trial_bundles=trial,
        trial_capacity=trial_capacity,
        trials_at_once=min(best_trials, limit),
        concurrency_limit=limit,
        actor_bundle=actor,
        num_actors=evaluate.num_actors,
        actor_capacity=actor_capacity,
        warnings=warnings,
    )


def local_locations(cluster_cfg: dict[str, Any], experiment_cfg: ExperimentConfig) -> list[str]:
    """One line per experiment location that is a local path while the cluster has worker nodes (else none).

    Nodes of a cluster share no disk: a local catalog, prepared cache, run or evaluation folder lands on whichever
    node wrote it, and the others (or a spot node's replacement) never see it. Only object-store URIs are shared.
    Unset keys with a default derived from another key (prepared_dir, output_dir) follow that key and are skipped.
    """
    from phi3v_ray.storage import is_uri

    workers = [t.name for t in node_types(cluster_cfg) if not t.is_head and t.max_workers > 0]
    if not workers:
        return []
    data, evaluate = experiment_cfg.data, experiment_cfg.evaluate
    named: list[tuple[str, str | None]] = [
        ("data.catalog_dir", data.catalog_dir),
        ("data.prepared_dir", data.prepared_dir),
        ("run.storage_path", experiment_cfg.run.storage_path),
        ("evaluate.output_dir", evaluate.output_dir),
    ] + [(f"evaluate.checkpoints[{index}]", value) for index, value in enumerate(evaluate.checkpoints)]
    return [
        f"{key}: {value!r} is a local path, but worker nodes ({', '.join(workers)}) share no disk with the head "
        f"or each other; use a bucket URI such as s3://<bucket>/phi3v-ray/..."
        for key, value in named
        if value is not None and not is_uri(value)
    ]


def _capacities(item: list[Bundle], head: NodeType, choices: list[NodeType | None]) -> list[Capacity]:
    """For the head alone (None) and each worker type scaled to its max: copies of `item` that fit."""
    result = []
    for worker in choices:
        nodes = _cluster_at_max(head, worker)
        per_node_host = [worker] if worker else [head]
        result.append(
            Capacity(
                node_type=worker.name if worker else head.name,
                nodes=worker.max_workers if worker else 1,
                per_node=_count_placeable(item, per_node_host, _MAX_PACKED_ITEMS),
                at_once=_count_placeable(item, nodes, _MAX_PACKED_ITEMS),
            )
        )
    return result
