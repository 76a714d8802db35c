"""`phi3v-ray demo` end to end, as a user runs it (a subprocess), with 2 trials instead of the default 4.

The full default demo (4 trials x 200 steps) is timed by hand for the README; this run keeps every stage real
(sample catalog, warm start, Ray Data prepare, a 2-trial Tune sweep of 2-worker DeepSpeed runs, W&B offline,
evaluation) and checks the claim the demo exists to show: the best checkpoint beats the trivial predictor on
held-out category accuracy, which needs the model to read the photo.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Hang bounds, not speed checks: the demo takes ~5 min on a quiet 2-core machine but measured 19 min 28 s under a load
# average of 20-28 (other test runs sharing the cores); the suite-wide 900 s per-test timeout would cut it off.
DEMO_TIMEOUT_S = 3000
pytestmark = [pytest.mark.slow, pytest.mark.timeout(DEMO_TIMEOUT_S + 300)]


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
        command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=DEMO_TIMEOUT_S, check=False
    )
    return completed, out


def _binomial_tail(n: int, p: float, k: int) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def blind_bound(n: int, blind_rate: float, tries: int, alpha: float = 0.05) -> float:
    """The accuracy a predictor that ignores the photo exceeds with chance below `alpha`, best of `tries` checkpoints.

    A blind predictor's hits on n products are at most Binomial(n, blind_rate) (blind_rate: the trivial
    predictor's majority-category rate); the smallest k with tail <= alpha / tries (Bonferroni over checkpoints)."""
    k = next(k for k in range(n + 1) if _binomial_tail(n, blind_rate, k) <= alpha / tries)
    return k / n


def test_demo_exits_zero_and_beats_the_trivial_predictor(demo_run) -> None:
    completed, out = demo_run
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    leaderboard = json.loads((out / "evaluation" / "leaderboard.json").read_text())
    rows = leaderboard["rows"] if isinstance(leaderboard, dict) else leaderboard
    trivial = next(row for row in rows if row["kind"] == "trivial")
    trained = [row for row in rows if row["kind"] == "lora"]
    best = max(trained, key=lambda row: row["category_accuracy"])
    # Not a margin tuned to one run, but "reads the photo" as a test: on n held-out products a predictor that ignores
    # the photo scores like the trivial predictor; the bound is what it would exceed by chance with p < 5 % for the
    # best of all scored checkpoints. Demo data (seed 0): n = 64, trivial 6/64 = 0.094, <= 8 checkpoints -> bound
    # 13/64 = 0.203. Measured best checkpoints: 0.41 and 0.36 at 200 steps (README run, 4 trials); 0.41 at 200 steps
    # (0.34 at 150, 0.31 for the trial ASHA stopped at 100) in this 2-trial test's own run under load; 0.17-0.40 with
    # 2 trials at only 150 steps (commit e1e47fb). The old fixed "+0.05" (>= 10/64) was passed by a blind checkpoint
    # by chance with p ~ 0.07 each, so it proved little, and moving it up to fit one run would make it flaky.
    n = int(best["n_examples"])
    bound = blind_bound(n, trivial["category_accuracy"], tries=len(trained))
    assert best["category_accuracy"] >= bound, (bound, best, trivial)
    # The answer format is learned and read back from the cache correctly: a broken cache or prompt parses ~0;
    # checkpoints at 150-200 steps measured 0.94-1.0 (stopped trials' step-100 checkpoints: 0.28, 0.70, 0.98).
    assert best["parse_rate"] >= 0.8, best
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
