"""The environment every Ray process must see is forwarded once, and never clashes with a submitted job's own."""

from __future__ import annotations

import json

from phi3v_ray.ray_session import JOB_CONFIG_ENV, forwarded_env


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
    assert forwarded_env() == {"TOKENIZERS_PARALLELISM": "false"}
