"""Real multi-node Ray clusters on loopback (`ray start --head` + one `ray start --address` per worker node).

`two_node_cluster`: a head and one worker node. `multi_node_cluster`: a head with no CPUs (like cluster.yaml's, so
work lands on worker nodes) and N worker nodes, each its own raylet with its own resources and marker; `kill_node`
takes one of them away the way a reclaimed spot instance does (see its docstring).

Ports: every Ray component is given port 0, so it binds a port of the kernel's choosing itself and the test reads
the addresses back (the GCS address from the cluster's `ray_current_cluster` file, the dashboard's from the GCS):
nothing is picked, released and reused later, which raced with every other process on a shared machine. The one
exception is the Ray Client server, which Ray requires on a fixed port; if another process takes it between our
pick and Ray's bind, `ray start --block` exits and the start is retried on a fresh port (a bounded number of times).
The cluster is stopped by terminating exactly the processes this module started (never `ray stop`, which would end
every Ray on the machine).

`private_dirs`: the worker node can run in its own mount namespace (`unshare -m`) with an empty tmpfs mounted over
each of these folders, so it shares no disk with the head there: a stage that silently writes on one node and
reads on the other fails, as it would on a cloud cluster.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

VENV_BIN = Path(sys.executable).parent
RAY_BIN = str(VENV_BIN / "ray")
HEAD_MARKER = "phi3v_test_head"
WORKER_MARKER = "phi3v_test_worker"
START_TIMEOUT_S = 300  # per node: startup takes ~30 s on a busy 2-core box, far more under heavy load
START_ATTEMPTS = 3  # fresh ports each time; only a start that exits early (a port clash) is retried


@dataclass
class WorkerNode:
    """One worker node: its `ray start --block` process, the marker resource only it has, and its Ray node id."""

    marker: str
    process: subprocess.Popen
    node_id: str = ""


@dataclass
class TwoNodeCluster:
    """Addresses of the running test cluster (any number of worker nodes, despite the historical name)."""

    gcs_address: str
    dashboard_url: str
    temp_dir: Path
    env: dict[str, str]
    workers: list[WorkerNode] = field(default_factory=list)

    def state(self, kind: str, **filters: str) -> list[dict]:
        """Rows of the dashboard's state API (`/api/v0/<kind>`), filtered by equality on the given fields."""
        query = "&".join(
            f"filter_keys={key}&filter_predicates=%3D&filter_values={value}" for key, value in filters.items()
        )
        url = f"{self.dashboard_url}/api/v0/{kind}?limit=10000&detail=true&{query}"
        with urllib.request.urlopen(url, timeout=30) as response:
            return json.load(response)["data"]["result"]["result"]

    def worker_on(self, node_id: str) -> WorkerNode | None:
        """The worker node with this Ray node id (None for the head or an unknown id)."""
        return next((worker for worker in self.workers if worker.node_id == node_id), None)


class StartFailed(RuntimeError):
    """A `ray start` exited before its node was up (e.g. the client server port was taken meanwhile)."""


def _kernel_port() -> int:
    """A port free right now, for the Ray Client server (the only component Ray will not let choose its own)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


# Port 0 everywhere: each component binds a port the kernel gives it and publishes it (nothing to race for).
# Worker ports 0/0: each worker binds its own port too (Ray's default 10002-19999 window is shared with every other
# Ray on the machine).
NODE_PORT_FLAGS = [
    "--node-manager-port=0",
    "--object-manager-port=0",
    "--metrics-export-port=0",
    "--runtime-env-agent-port=0",
    "--dashboard-agent-grpc-port=0",
    "--dashboard-agent-listen-port=0",  # default 52365 would clash between our two nodes and other clusters
    "--min-worker-port=0",
    "--max-worker-port=0",
]


def _stop(process: subprocess.Popen) -> None:
    """Terminate one `ray start --block` and every process it spawned (raylet, GCS, dashboard, workers)."""
    try:
        family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(family, timeout=15)
    for member in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(alive, timeout=5)


def _alive(process: subprocess.Popen, what: str) -> None:
    if process.poll() is not None:
        raise StartFailed(f"{what} exited with status {process.returncode} while starting")


def _read_back_addresses(head: subprocess.Popen, temp_dir: Path) -> tuple[str, str]:
    """The GCS address the head wrote to its temp dir, and the dashboard address it published in the GCS."""
    from ray._private import ray_constants
    from ray._raylet import GcsClient

    deadline = time.monotonic() + START_TIMEOUT_S
    address_file = temp_dir / "ray_current_cluster"
    while not (address_file.is_file() and address_file.read_text().strip()):
        _alive(head, "the head node")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the head wrote no GCS address to {address_file} in {START_TIMEOUT_S}s")
        time.sleep(0.5)
    gcs_address = address_file.read_text().strip()
    client = GcsClient(address=gcs_address)
    while True:
        _alive(head, "the head node")
        dashboard = client.internal_kv_get(
            ray_constants.DASHBOARD_ADDRESS.encode(),
            namespace=ray_constants.KV_NAMESPACE_DASHBOARD,
            timeout=30,
        )
        if dashboard:
            return gcs_address, f"http://{dashboard.decode()}"
        if time.monotonic() > deadline:
            raise RuntimeError(f"the head published no dashboard address in {START_TIMEOUT_S}s")
        time.sleep(0.5)


def _wait_for_nodes(cluster: TwoNodeCluster, expected: int, started: list[subprocess.Popen]) -> None:
    """Poll the dashboard's state API until `expected` nodes are ALIVE; fail fast if a `ray start` exits."""
    deadline = time.monotonic() + START_TIMEOUT_S
    alive = 0
    while time.monotonic() < deadline:
        for process in started:
            _alive(process, "a `ray start`")
        try:
            with urllib.request.urlopen(
                f"{cluster.dashboard_url}/api/v0/nodes?limit=100", timeout=30
            ) as response:
                nodes = json.load(response)["data"]["result"]["result"]
            alive = sum(node.get("state") == "ALIVE" for node in nodes)
            if alive >= expected:
                return
        except (OSError, ValueError, KeyError):
            pass  # dashboard not up yet
        time.sleep(1)
    raise RuntimeError(f"test cluster reached {alive} of {expected} alive nodes in {START_TIMEOUT_S}s")


def _in_private_mounts(command: list[str], private_dirs: Sequence[Path]) -> list[str]:
    """`command` in a new mount namespace with an empty tmpfs over each private dir (none: `command` as it is)."""
    if not private_dirs:
        return command
    mounts = " && ".join(f"mount -t tmpfs tmpfs {shlex.quote(str(d))}" for d in private_dirs)
    return [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        f"{mounts} && exec {shlex.join(command)}",
    ]


def _start_cluster(
    temp_dir: Path,
    env: dict[str, str],
    started: list[subprocess.Popen],
    private_dirs: Sequence[Path] = (),
    *,
    head_cpus: float = 2,
    head_resources: dict[str, float] | None = None,
    workers: Sequence[tuple[str, float]] = ((WORKER_MARKER, 1),),
) -> TwoNodeCluster:
    """Start the head, then every worker node (marker, CPUs) at once (appending each process to `started`);
    raises StartFailed on an exit."""
    common = ["--block", f"--temp-dir={temp_dir}", "--disable-usage-stats", *NODE_PORT_FLAGS]
    head = subprocess.Popen(
        [
            RAY_BIN,
            "start",
            "--head",
            "--port=0",
            f"--num-cpus={head_cpus:g}",
            "--num-gpus=0",
            f"--resources={json.dumps({HEAD_MARKER: 1, **(head_resources or {})})}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            "--dashboard-port=0",
            f"--ray-client-server-port={_kernel_port()}",
            *common,
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    started.append(head)
    gcs_address, dashboard_url = _read_back_addresses(head, temp_dir)
    cluster = TwoNodeCluster(gcs_address=gcs_address, dashboard_url=dashboard_url, temp_dir=temp_dir, env=env)
    _wait_for_nodes(cluster, expected=1, started=started)
    # One at a time: worker nodes started together on one machine time out (they share a session dir and an IP).
    for marker, cpus in workers:
        worker = subprocess.Popen(
            _in_private_mounts(
                [
                    RAY_BIN,
                    "start",
                    f"--address={cluster.gcs_address}",
                    f"--num-cpus={cpus:g}",
                    "--num-gpus=0",
                    f"--resources={json.dumps({marker: 1})}",
                    *common,
                ],
                private_dirs,
            ),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        started.append(worker)
        cluster.workers.append(WorkerNode(marker=marker, process=worker))
        _wait_for_nodes(cluster, expected=1 + len(cluster.workers), started=started)
    for node in cluster.state("nodes", state="ALIVE"):
        for worker in cluster.workers:
            if worker.marker in node.get("resources_total", {}):
                worker.node_id = node["node_id"]
    return cluster


def two_node_cluster(private_dirs: Sequence[Path] = ()) -> Iterator[TwoNodeCluster]:
    """A head (2 CPUs + head marker) and a worker node (1 CPU + worker marker), real processes on this machine."""
    yield from _cluster(private_dirs=private_dirs)


# Ray notices a dead node through failed GCS health checks (default: every 3 s, 5 misses, so ~15 s); a test of node
# loss only waits for that, so its cluster checks every 0.5 s and gives up after 3 misses.
FAST_NODE_DEATH_ENV = {
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "500",
    "RAY_health_check_timeout_ms": "1000",
    "RAY_health_check_failure_threshold": "3",
}


def multi_node_cluster(
    workers: int = 2,
    *,
    worker_cpus: float = 2,
    head_cpus: float = 0,
    head_resources: dict[str, float] | None = None,
    extra_env: dict[str, str] | None = None,
) -> Iterator[TwoNodeCluster]:
    """A head with `head_cpus` (0, like cluster.yaml's, so drivers stay there and work lands on worker nodes) and
    `workers` worker nodes of `worker_cpus` each, marked `phi3v_test_worker_<i>`; node death is detected fast.
    `head_resources` adds custom resources to the head (cluster.yaml's trial-driver resource)."""
    yield from _cluster(
        head_cpus=head_cpus,
        head_resources=head_resources,
        workers=[(f"{WORKER_MARKER}_{index}", worker_cpus) for index in range(workers)],
        extra_env={**FAST_NODE_DEATH_ENV, **(extra_env or {})},
    )


def _family(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def kill_node(node: WorkerNode) -> list[int]:
    """SIGKILL exactly the processes this node's `ray start` created (raylet, agents, workers); returns their pids.

    A reclaimed spot instance takes all of them at once, with no goodbye to the GCS. The family is frozen first
    (SIGSTOP, rescanned until it stops growing) so a worker the raylet forks meanwhile is not missed, and a worker
    whose parent dies is not orphaned out of reach. Never `ray stop`: other Ray clusters run on this machine.
    """
    try:
        root = psutil.Process(node.process.pid)
    except psutil.NoSuchProcess:
        return []
    frozen: dict[int, psutil.Process] = {}
    while True:
        new = [member for member in _family(root) if member.pid not in frozen]
        if not new:
            break
        for member in new:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.send_signal(signal.SIGSTOP)
            frozen[member.pid] = member
    for member in frozen.values():
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    psutil.wait_procs(list(frozen.values()), timeout=15)
    node.process.wait(timeout=15)
    return sorted(frozen)


def wait_for_node_state(cluster: TwoNodeCluster, node_id: str, state: str, timeout_s: float = 120) -> float:
    """Seconds until the GCS reports node `node_id` in `state` (e.g. DEAD after kill_node); raises on timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        with contextlib.suppress(OSError, ValueError, KeyError):
            if any(node["node_id"] == node_id for node in cluster.state("nodes", state=state)):
                return time.monotonic() - started
        time.sleep(0.5)
    raise RuntimeError(f"node {node_id} not {state} after {timeout_s}s")


def _cluster(
    *,
    private_dirs: Sequence[Path] = (),
    head_cpus: float = 2,
    head_resources: dict[str, float] | None = None,
    workers: Sequence[tuple[str, float]] = ((WORKER_MARKER, 1),),
    extra_env: dict[str, str] | None = None,
) -> Iterator[TwoNodeCluster]:
    """Start a cluster (retrying a start that lost its client-server port), yield it, stop exactly its processes."""
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # job entrypoints run the venv's python
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
        # Token auth protects real clusters; this one listens on this machine only and must not pick up (or write)
        # a token shared with other local clusters.
        "RAY_AUTH_MODE": "disabled",
        **(extra_env or {}),
    }
    env.pop("RAY_ADDRESS", None)
    # wandb.init in this (pytest) process leaves its service's address in os.environ; every process of the cluster
    # would inherit it and log through pytest's one service, where a killed worker's run stays "in use" and its
    # restart elsewhere is refused. Each node's processes start their own service, as on a real cluster.
    env.pop("WANDB_SERVICE", None)
    failures: list[str] = []
    for _ in range(START_ATTEMPTS):
        # Short path: Ray's unix sockets live under the temp dir and must stay below the 107-byte socket path limit.
        temp_dir = Path(tempfile.mkdtemp(prefix="p3vjobs-", dir="/tmp"))
        started: list[subprocess.Popen] = []
        try:
            try:
                cluster = _start_cluster(
                    temp_dir,
                    env,
                    started,
                    private_dirs,
                    head_cpus=head_cpus,
                    head_resources=head_resources,
                    workers=workers,
                )
            except StartFailed as failure:
                failures.append(str(failure))
                continue
            yield cluster
            return
        finally:
            for process in reversed(started):
                _stop(process)
            shutil.rmtree(temp_dir, ignore_errors=True)
    raise RuntimeError(f"the test cluster did not start in {START_ATTEMPTS} attempts: {failures}")
