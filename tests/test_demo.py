"""`phi3v-ray demo` end to end, as a user runs it (a subprocess), with 2 trials instead of the default 4.

The full default demo (4 trials x 200 steps) is timed by hand for the README; this run keeps every stage real
(sample catalog, warm start, Ray Data prepare, a 2-trial Tune sweep of 2-worker DeepSpeed runs, W&B offline,
evaluation) and checks the claim the demo exists to show: the best checkpoint beats the trivial predictor on
held-out category accuracy, which needs the model to read the photo.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "DS_ACCELERATOR": "cpu"}
    env.pop("RAY_ADDRESS", None)
    command = [
        sys.executable,
        "-m",
        "phi3v_ray.cli",
        "demo",
        "--out",
        str(out),
        "--trials",
        "2",
    ]
    completed = subprocess.run(
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1200, check=False
    )
    return completed, out


def test_demo_exits_zero_and_beats_the_trivial_predictor(demo_run) -> None:
    completed, out = demo_run
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    leaderboard = json.loads((out / "evaluation" / "leaderboard.json").read_text())
    rows = leaderboard["rows"] if isinstance(leaderboard, dict) else leaderboard
    trivial = next(row for row in rows if row["kind"] == "trivial")
    trained = [row for row in rows if row["kind"] == "lora"]
    best = max(trained, key=lambda row: row["category_accuracy"])
    # The README's demo (4 trials) reached 0.41 vs 0.09; two trials at the default 200 steps keep a clear margin.
    assert best["category_accuracy"] > trivial["category_accuracy"] + 0.05, (best, trivial)
    assert best["parse_rate"] > 0.9, (
        best
    )  # the answer format is learned, and read back from the cache correctly
    assert f"vs trivial {trivial['category_accuracy']:.2f}" in completed.stdout


def test_demo_leaves_every_artefact_it_announces(demo_run) -> None:
    completed, out = demo_run
    assert completed.returncode == 0
    checkpoints = sorted(
        path for path in (out / "runs" / "demo-sweep").glob("*/checkpoint_*") if path.is_dir()
    )
    assert checkpoints, "the sweep wrote no checkpoints"
    scored = {
        row["checkpoint"] for row in json.loads((out / "evaluation" / "leaderboard.json").read_text())["rows"]
    }
    for checkpoint in checkpoints:
        assert f"demo-sweep/{checkpoint.parent.name}/{checkpoint.name}" in scored
    for plot in ("category_accuracy_per_checkpoint", "best_price_scatter", "best_category_confusion"):
        assert (out / "evaluation" / f"{plot}.png").stat().st_size > 1000
    offline_runs = list((out / "wandb").rglob("offline-run-*"))
    assert len(offline_runs) >= 3, offline_runs  # one per trial + the evaluation run
    results = (out / "runs" / "demo-sweep" / "sweep_results.csv").read_text().splitlines()
    assert len(results) == 1 + 2  # header + one line per trial
