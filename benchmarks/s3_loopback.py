"""An S3 endpoint on loopback for the storage benchmarks: moto's standalone server in its own process.

The tests use the same emulator (moto's server, the one Ray's own S3 tests use). Here it runs in a separate process so
its request handling does not share the benchmark driver's interpreter lock, the way a real store shares nothing with
the driver. The environment is pointed at it before Ray starts, so Ray workers inherit it and reach it through the
same pyarrow client as AWS with only the endpoint overridden; the dummy credentials can never authenticate against
AWS. Imported by storage_prepare.py and storage_fetch.py (run them as `python benchmarks/<script>.py`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

BUCKET = "phi3v-bench"
_SERVER: list[subprocess.Popen] = []  # the running server (one at a time), for server_cpu_seconds()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(port: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"moto server did not listen on 127.0.0.1:{port} within {timeout_s:.0f} s")


@contextlib.contextmanager
def loopback_s3(server_cpus: set[int] | None = None) -> Iterator[str]:
    """Start moto's S3 server on a free loopback port, point this process's environment at it, make BUCKET.

    Yields the bucket URI (s3://phi3v-bench). Call before Ray starts so its workers inherit the environment.
    `server_cpus` pins the server to those cores (sched_setaffinity), to keep its cost off the cores Ray uses.
    """
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=(lambda: os.sched_setaffinity(0, server_cpus)) if server_cpus else None,
    )
    _SERVER[:] = [server]
    try:
        _wait_for(port)
        endpoint = f"http://127.0.0.1:{port}"
        for name in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
            os.environ.pop(name, None)
        os.environ.update(
            {
                "AWS_ENDPOINT_URL": endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true",
            }
        )
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield f"s3://{BUCKET}"
    finally:
        _SERVER.clear()
        server.terminate()
        server.wait(timeout=30)


def server_cpu_seconds() -> float:
    """CPU seconds (user + system) the running S3 server has used so far: what a real endpoint costs no client."""
    import psutil

    times = psutil.Process(_SERVER[0].pid).cpu_times()
    return times.user + times.system


def upload_dir(local_dir: Path, uri: str) -> int:
    """Copy a local folder into the bucket (parallel PUTs through pyarrow); returns the number of objects there."""
    import pyarrow.fs as pafs

    from phi3v_ray.storage import location

    target = location(uri)
    pafs.copy_files(
        str(local_dir),
        target.path,
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=target.filesystem,
        use_threads=True,
    )
    return sum(1 for _ in target.files(recursive=True))


def quiet_ray_data() -> None:
    """No progress bars or per-dataset INFO lines: the benchmark prints its own figures."""
    import logging

    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def median(values: list[float]) -> float:
    """The median, or nan for no values."""
    return statistics.median(values) if values else float("nan")
