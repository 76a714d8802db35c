"""Shared fixtures: the official tokenizer/config files, tiny tokenizer, and one local Ray cluster per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

REPO_ROOT = Path(__file__).resolve().parents[1]


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
