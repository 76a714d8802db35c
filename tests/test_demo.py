"""`phi3v-ray demo` end to end, exactly as a user runs it (a subprocess, default settings).

The README's timings come from the same command run by hand on a quiet machine; this run keeps every stage real
(sample catalog, warm start, Ray Data prepare, a 2-trial Tune sweep of 2-worker DeepSpeed runs, W&B offline,
evaluation) and checks the claim the demo exists to show: the checkpoint chosen on the validation split beats the
trivial predictor on the held-out test split in category, title and price, which needs the model to read the photo.
Its captured stdout is the non-interactive transcript: one line per stage, and none of Ray's own lines (they go to
<out>/logs/demo.log).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from phi3v_ray.demo.run import REQUIRED_LIFTS, STAGES
from phi3v_ray.evaluation.leaderboard import reported_rows
from phi3v_ray.evaluation.metrics import METRIC_DIRECTIONS

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


def _board(out: Path):
    import pandas as pd

    payload = json.loads((out / "evaluation" / "leaderboard.json").read_text())
    return payload, pd.DataFrame.from_records(payload["rows"])


def test_demo_exits_zero_and_beats_the_trivial_predictor_on_held_out_test(demo_run) -> None:
    import pandas as pd

    completed, out = demo_run
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    payload, board = _board(out)
    report = {row["checkpoint"]: row for row in reported_rows(board).to_dict("records")}
    trivial = next(row for row in report.values() if row["kind"] == "trivial")
    chosen = report[payload["chosen"]]
    trained = board[board["kind"] == "lora"]
    # Not a margin tuned to one run, but "reads the photo" as a test: on n held-out products a predictor that ignores
    # the photo scores like the trivial predictor; the bound is what it would exceed by chance with p < 5 % for the
    # best of all scored checkpoints (Bonferroni over every checkpoint that competed on validation, which is
    # conservative: only the chosen one is scored on test). Demo data (seed 0): n = 64, trivial 6/64 = 0.094,
    # <= 8 checkpoints -> bound 13/64 = 0.203. Measured before selection moved to validation (best-on-test, so
    # optimistic): 0.41 and 0.36 at 200 steps; 0.17-0.40 with 2 trials at only 150 steps (commit e1e47fb).
    # Since then (600 steps, chosen on val, reported on test): 0.53-0.66.
    n = int(chosen["n_examples"])
    bound = blind_bound(n, trivial["category_accuracy"], tries=len(trained))
    assert chosen["category_accuracy"] >= bound, (bound, chosen, trivial)
    # The answer format is learned and read back from the cache correctly: a broken cache or prompt parses ~0.
    assert chosen["parse_rate"] >= 0.8, chosen
    # The exit code's own rule: every required lift is positive on held-out test (margin 0, all three fields).
    # Measured on three seeds (3,600 products): price median APE lifts of 0.16, 0.09 and 0.21 over trivial.
    assert set(REQUIRED_LIFTS) == {"category_accuracy", "title_token_f1", "price_median_ape"}
    for metric in REQUIRED_LIFTS:
        lift = chosen[metric] - trivial[metric]
        assert (lift if METRIC_DIRECTIONS[metric] else -lift) > 0, (metric, chosen, trivial)
    # The price is read off the photo, not one number for every product (the failure before the warm start wrote
    # digits: "Full Price: 10.0" for all 64).
    predictions = pd.read_parquet(out / "evaluation" / "predictions.parquet")
    chosen_on_test = predictions[
        (predictions["split"] == "test") & (predictions["checkpoint"] == payload["chosen"])
    ]
    assert chosen_on_test["pred_full_price"].nunique() >= 5, chosen_on_test["pred_full_price"].value_counts()
    assert f"vs trivial {trivial['category_accuracy']:.2f}" in completed.stdout
    # The required lifts, as the verdict line words them.
    for words in ("category accuracy", "title token F1", "price median APE"):
        assert re.search(rf"{words} [\d.]+ vs trivial [\d.]+ \(better\)", completed.stdout), words


def test_demo_ranks_on_validation_and_reports_only_the_choice_on_test(demo_run) -> None:
    completed, out = demo_run
    assert completed.returncode == 0
    payload, board = _board(out)
    assert (payload["ranked_on"], payload["reported_on"]) == ("val", "test")
    assert set(board["split"]) == {"val"}
    trained = board[board["kind"] == "lora"].sort_values("rank")
    assert payload["chosen"] == trained.iloc[0]["checkpoint"]  # the rank, computed on validation, chose it
    with_test = board[board["test_n_examples"].notna()]
    assert set(with_test["checkpoint"]) == {payload["chosen"], "base", "trivial"}
    import pandas as pd

    predictions = pd.read_parquet(out / "evaluation" / "predictions.parquet")
    on_test = predictions[predictions["split"] == "test"]
    assert set(on_test["checkpoint"]) == {
        payload["chosen"],
        "base",
        "trivial",
    }  # no other checkpoint saw test
    on_val = set(predictions.loc[predictions["split"] == "val", "product_code"])
    assert on_val and not on_val & set(on_test["product_code"])
    last = [line for line in completed.stdout.splitlines() if line.startswith(f"[{STAGES}/{STAGES}]")][-1]
    assert f"chosen on val: {payload['chosen']}" in last and "on held-out test" in last


# What Ray Data prints on a non-interactive terminal (its INFO logger and its logged progress), and Tune's tables.
RAY_OWN_LINES = re.compile(
    r"\bINFO\b|Running Dataset|Execution plan of Dataset|streaming_executor|Trial status"
)
STAGE_LINE = re.compile(r"^\[(\d)/(\d)\] (\S.*) \((?:\d+s|\d+m\d\ds)\)$")


def test_non_interactive_transcript_has_one_line_per_stage_and_no_ray_lines(demo_run) -> None:
    completed, out = demo_run
    lines = completed.stdout.splitlines()
    assert not [line for line in lines if RAY_OWN_LINES.search(line)]
    stages = [match for line in lines if (match := STAGE_LINE.match(line))]
    assert [int(match.group(1)) for match in stages] == list(range(1, STAGES + 1)), lines
    assert all(int(match.group(2)) == STAGES for match in stages)
    assert sum(line.startswith("[") and "/" in line[:6] for line in lines) == STAGES  # no other stage lines
    # Ray's lines were routed, not lost: the log the demo names holds them.
    log = out / "logs" / "demo.log"
    assert str(log) in completed.stdout
    assert RAY_OWN_LINES.search(log.read_text(errors="replace"))
    assert "Traceback" not in completed.stderr
    # Nor after the last line: Ray is shut down while its output still goes to the log (its parting warnings,
    # such as the raylet's "PYTHON worker processes have been started", used to land on the terminal).
    assert not [
        line for line in completed.stderr.splitlines() if "(raylet)" in line or RAY_OWN_LINES.search(line)
    ]


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
    for plot in (
        "price_median_ape_per_checkpoint",  # the demo ranks on the price (demo/run.py demo_config)
        "best_price_scatter",
        "best_price_error_by_category",
        "best_category_confusion",
    ):
        assert (out / "evaluation" / f"{plot}.png").stat().st_size > 1000
    offline_runs = list((out / "wandb").rglob("offline-run-*"))
    assert len(offline_runs) >= 3, offline_runs  # one per trial + the evaluation run
    results = (out / "runs" / "demo-sweep" / "sweep_results.csv").read_text().splitlines()
    assert len(results) == 1 + 2  # header + one line per trial
