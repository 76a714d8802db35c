"""Shared fixtures: the official tokenizer/config files, tiny tokenizer, and one local Ray cluster per session."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

REPO_ROOT = Path(__file__).resolve().parents[1]


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# Object storage in tests is moto's standalone S3 server on loopback (the emulator Ray's own S3 tests use), reached
# through the same client code as AWS with only the endpoint overridden. Set before any Ray process starts, so Ray
# workers inherit it; the dummy credentials make sure nothing here could ever authenticate against AWS.
S3_PORT = _free_loopback_port()
os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{S3_PORT}"
os.environ.pop("AWS_ENDPOINT_URL_S3", None)
os.environ["AWS_ACCESS_KEY_ID"] = "testing"
os.environ["AWS_SECRET_ACCESS_KEY"] = "testing"
os.environ.pop("AWS_SESSION_TOKEN", None)
os.environ["AWS_REGION"] = "us-east-1"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


def official_dir() -> Path | None:
    """Where the official config/tokenizer files are: $PHI3V_OFFICIAL_DIR, else ../shared/phi3v-official."""
    configured = os.environ.get("PHI3V_OFFICIAL_DIR")
    if configured:
        path = Path(configured)
        if not (path / "config.json").is_file():
            raise RuntimeError(f"PHI3V_OFFICIAL_DIR={configured} has no config.json")
        return path
    fallback = REPO_ROOT.parent / "shared" / "phi3v-official"
    return fallback if (fallback / "config.json").is_file() else None


@pytest.fixture(scope="session")
def official_files() -> Path:
    """The official Phi-3-Vision config and tokenizer files (no weights)."""
    path = official_dir()
    if path is None:
        pytest.skip(
            "official Phi-3-Vision files not available: set PHI3V_OFFICIAL_DIR to a checkpoint directory"
        )
    return path


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray cluster shared by the whole test session (8 logical CPUs on a 2-core machine).

    Logical slots, not cores: concurrent tiny trials hold CPU bundles while mostly waiting, and Ray Data read
    tasks need free slots outside those bundles, or a sweep starves its own data feed."""
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=8,
            include_dashboard=True,
            log_to_driver=False,
            runtime_env={
                "env_vars": {
                    "WANDB_MODE": "offline",
                    "DS_ACCELERATOR": "cpu",
                    "TOKENIZERS_PARALLELISM": "false",
                }
            },
        )
    yield ray


@pytest.fixture(scope="session")
def processor():
    """The tiny preset's processor (tiny tokenizer), for tests that prepare evaluation rows by hand."""
    from phi3v_ray.model.configuration import Phi3VConfig
    from phi3v_ray.model.processing import Phi3VProcessor
    from phi3v_ray.model.tokenizer import tiny_tokenizer

    return Phi3VProcessor.from_config(Phi3VConfig.preset("tiny"), tiny_tokenizer())


@pytest.fixture(scope="session")
def s3_server():
    """moto's standalone S3 server (ThreadedMotoServer) on loopback, at the endpoint the environment names."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one INFO line per S3 request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    yield os.environ["AWS_ENDPOINT_URL"]
    server.stop()


@pytest.fixture
def bucket(s3_server) -> str:
    """A fresh, empty bucket on the loopback S3 server; returns its URI (s3://name)."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"
