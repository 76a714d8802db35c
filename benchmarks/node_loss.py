"""Losing a training node: steps trained twice and recovery time, with a preemption notice vs a plain kill.

For each mode, a real three-node Ray cluster on loopback (a head with no CPUs, like cluster.yaml's, and two worker
nodes) runs one tiny-preset training run (2 workers, DeepSpeed on CPU, W&B offline) with a checkpoint every
--checkpoint-every steps. Once the run has logged step --at, the node running the training workers goes:
  notice   SIGTERM to that node's `ray start`: Ray drains the node (PREEMPTION) for --drain-s seconds, Ray Train tells
           the loop, which checkpoints at once and trains no further until the group restarts elsewhere;
  kill     SIGKILL to every process that node's `ray start` created, as a reclaimed spot instance with no warning;
           the group restarts from the last cadence checkpoint.
Measured from the run's W&B attempts (one offline folder per attempt, same run id):
  redone     training steps trained more than once (the baseline is the kill: everything since its last checkpoint)
  recovery   seconds from the signal to the first step logged by the restarted group

    python benchmarks/node_loss.py [--max-steps 60] [--checkpoint-every 10] [--at 14] [--drain-s 10]
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from phi3v_ray.tracking import find_offline_runs  # noqa: E402

from support.ray_cluster import kill_node, multi_node_cluster  # noqa: E402
from support.wandb_files import read_offline_run  # noqa: E402

DRIVER = REPO / "tests" / "support" / "train_driver.py"
RUN_NAME = "node-loss"


def attempts(wandb_dir: Path) -> list[list[dict]]:
    """Each attempt's training rows (step and wall time), in attempt order; half-written files read as far as they go."""
    found = []
    for folder in find_offline_runs(wandb_dir, RUN_NAME):
        try:
            history = read_offline_run(folder).history
        except Exception:  # noqa: BLE001 - a record being written this instant
            history = []
        found.append([row for row in history if "train/loss" in row])
    return found


def training_node(cluster) -> object:  # noqa: ANN001 - support.ray_cluster.TwoNodeCluster
    """The worker node that runs the training workers."""
    actors = [a for a in cluster.state("actors", state="ALIVE") if "TrainWorker" in a.get("class_name", "")]
    node = cluster.worker_on(actors[0]["node_id"])
    if node is None:
        raise RuntimeError("the training workers run on the head")
    return node


def measure(mode: str, args: argparse.Namespace, work: Path) -> dict[str, float]:
    """One run on a fresh cluster, losing the training node once at step >= args.at."""
    tmp = work / mode
    tmp.mkdir()
    overrides = [
        f"run.name={RUN_NAME}",
        f"run.max_steps={args.max_steps}",
        f"run.checkpoint_every={args.checkpoint_every}",
        f"run.eval_every={args.checkpoint_every}",
        "run.keep_best=100",
        "run.max_failures=2",
        "run.val_generate_samples=0",
        "scaling.num_workers=2",
        "data.length_grouping=false",
        "optim.micro_batch=2",
    ]
    extra = {
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": str(args.drain_s),
        "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S": "0.5",
    }
    cluster_iter = multi_node_cluster(workers=2, worker_cpus=2, extra_env=extra)
    cluster = next(cluster_iter)
    try:
        env = {**cluster.env, "RAY_ADDRESS": cluster.gcs_address, "PYTHONPATH": str(REPO / "tests")}
        with (tmp / "driver.log").open("w") as log:
            driver = subprocess.Popen(
                [sys.executable, str(DRIVER), str(tmp / "result.json"), str(tmp), *overrides],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            while not any(len(rows) >= args.at for rows in attempts(tmp / "wandb")):
                if driver.poll() is not None:
                    raise RuntimeError((tmp / "driver.log").read_text()[-3000:])
                time.sleep(0.2)
            node = training_node(cluster)
            signalled = time.time()
            if mode == "notice":
                node.process.send_signal(signal.SIGTERM)
            else:
                kill_node(node)
            driver.wait(timeout=1200)
        if driver.returncode != 0:
            raise RuntimeError((tmp / "driver.log").read_text()[-3000:])
    finally:
        if args.keep:  # Ray's own logs (controller, workers, raylets) go with the kept work folder
            shutil.copytree(
                cluster.temp_dir,
                tmp / "ray",
                ignore=shutil.ignore_patterns("*.sock", "sockets"),
                symlinks=True,
                ignore_dangling_symlinks=True,
                dirs_exist_ok=True,
            )
        cluster_iter.close()
    runs = attempts(tmp / "wandb")
    steps = [int(row["trainer/step"]) for rows in runs for row in rows]
    restarted = runs[-1][0]
    return {
        "attempts": len(runs),
        "redone": len(steps) - len(set(steps)),
        "recovery_s": float(restarted["_timestamp"]) - signalled,
        "resumed_at": int(restarted["trainer/step"]),
        "complete": float(set(steps) == set(range(1, args.max_steps + 1))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-steps", type=int, default=60)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--at", type=int, default=14, help="lose the node once this many steps are logged")
    parser.add_argument("--drain-s", type=int, default=10, help="the notice period (AWS gives ~120 s)")
    parser.add_argument("--modes", nargs="+", default=["kill", "notice"], choices=["kill", "notice"])
    parser.add_argument(
        "--keep", action="store_true", help="keep the work folder (driver logs, runs) and print it"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="phi3v-node-loss-"))
    results = {mode: measure(mode, args, work) for mode in args.modes}
    if args.keep:
        print(f"work folder: {work}")
    if set(results) != {"kill", "notice"}:
        print(results)
        return
    kill, notice = results["kill"], results["notice"]
    print(
        f"\nlosing the training node at step >= {args.at} of {args.max_steps} (checkpoint every "
        f"{args.checkpoint_every}, notice period {args.drain_s} s):"
    )
    print(f"  {'':<22}{'kill (baseline)':>16}{'notice':>12}")
    print(f"  {'steps trained twice':<22}{kill['redone']:>16d}{notice['redone']:>12d}")
    print(f"  {'resumed at step':<22}{kill['resumed_at']:>16d}{notice['resumed_at']:>12d}")
    print(
        f"  {'recovery (s)':<22}{kill['recovery_s']:>16.1f}{notice['recovery_s']:>12.1f}"
        f"   ({notice['recovery_s'] / kill['recovery_s']:.2f}x)"
    )
    print(f"  {'every step trained':<22}{bool(kill['complete'])!s:>16}{bool(notice['complete'])!s:>12}")


if __name__ == "__main__":
    main()
