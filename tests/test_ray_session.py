"""The environment every Ray process must see is forwarded once, and never clashes with a submitted job's own."""

from __future__ import annotations

import json

from phi3v_ray.cluster import SECRET_NAMES
from phi3v_ray.ray_session import FORWARDED_ENV, JOB_CONFIG_ENV, connect, forwarded_env

S3_SETTINGS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION")


def test_forwarded_env_holds_the_listed_settings_and_nothing_else(monkeypatch):
    monkeypatch.delenv(JOB_CONFIG_ENV, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("WANDB_API_KEY", "secret-never-copied")
    env = forwarded_env()
    assert env["WANDB_MODE"] == "offline" and env["DS_ACCELERATOR"] == "cpu"
    assert "WANDB_API_KEY" not in env


def test_inside_a_submitted_job_the_jobs_own_env_vars_are_not_repeated(monkeypatch):
    # Ray refuses a driver runtime_env that repeats a job env var (test_cluster_jobs shows the real failure).
    job = {"runtime_env": {"env_vars": {"WANDB_MODE": "offline", "DS_ACCELERATOR": "cpu"}}}
    monkeypatch.setenv(JOB_CONFIG_ENV, json.dumps(job))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    # conftest points S3 at the loopback emulator; this test is about the W&B settings
    for name in S3_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    assert forwarded_env() == {"TOKENIZERS_PARALLELISM": "false"}


def test_the_s3_endpoint_and_region_reach_every_node_but_credentials_never_do(monkeypatch):
    # A worker on another node must reach the same S3-compatible store (MinIO, R2) as the driver; its credentials
    # come from its own instance profile, so the driver's keys are never copied into the job's runtime_env.
    monkeypatch.delenv(JOB_CONFIG_ENV, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.internal:9000")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://minio.internal:9000")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    for secret in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.setenv(secret, "never-copied")
    env = forwarded_env()
    assert {name: env[name] for name in S3_SETTINGS} == {
        "AWS_ENDPOINT_URL": "http://minio.internal:9000",
        "AWS_ENDPOINT_URL_S3": "http://minio.internal:9000",
        "AWS_REGION": "eu-west-1",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }
    assert "never-copied" not in env.values()
    assert not any(name in FORWARDED_ENV for name in SECRET_NAMES)


def test_connect_hands_the_forwarded_settings_to_ray_init(monkeypatch):
    import ray

    seen: dict = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **options: seen.update(options))
    monkeypatch.delenv(JOB_CONFIG_ENV, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-copied")
    assert connect(address="auto") is True
    env_vars = seen["runtime_env"]["env_vars"]
    assert env_vars["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000" and "AWS_SECRET_ACCESS_KEY" not in env_vars
