"""Selection apart from reporting: contestants are ranked on one split, the chosen checkpoint is reported on another.

Two untrained adapters (different seeds, so different content keys) and the base model are evaluated for real on
a 2-product validation split and a 2-product test split. Then planted cache entries make one checkpoint perfect on
validation only and the other perfect on test only: ranking on validation must choose the first and report its
(bad) test figures, while ranking on test alone would have chosen the second. The cache is the evaluator's own
(predictions keyed by split contents and checkpoint content), so the re-run reads the planted answers through the
same path as a real re-run after a sweep grows.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from phi3v_ray.config import EvalSection, config_from_dict
from phi3v_ray.data.answers import format_answer, parse_answer
from phi3v_ray.errors import ConfigError
from phi3v_ray.evaluation.discovery import discover_checkpoints
from phi3v_ray.evaluation.leaderboard import (
    attach_report,
    label_split,
    rank_contestants,
    reported_rows,
    splits_of,
    to_markdown,
)
from phi3v_ray.evaluation.predictor import OUTPUT_COLUMNS
from phi3v_ray.evaluation.scoring import TRUTH_COLUMNS, evaluate, evaluation_signature
from phi3v_ray.evaluation.trivial import TrivialPredictor

from support.synthetic_checkpoints import PRODUCTS, make_lora_checkpoint, prepared_rows

VAL_PRODUCTS, TEST_PRODUCTS = PRODUCTS[:2], PRODUCTS[2:]
SELECT = EvalSection(batch_size=4, max_new_tokens=8, cpus_per_actor=1.0, select_on="val", split="test")
TEST_ONLY = SELECT.model_copy(update={"select_on": None})


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    make_lora_checkpoint(root / "trial_a" / "checkpoint_000010", steps=0, seed=0)
    make_lora_checkpoint(root / "trial_b" / "checkpoint_000010", steps=0, seed=1)
    return root


def _trivial() -> TrivialPredictor:
    return TrivialPredictor.fit(
        [p.title for p in PRODUCTS], [p.category for p in PRODUCTS], [p.full_price for p in PRODUCTS]
    )


@pytest.fixture(scope="module")
def splits(ray_local, processor):
    val = ray_local.data.from_items(prepared_rows(processor, VAL_PRODUCTS, with_answer=False))
    test = ray_local.data.from_items(prepared_rows(processor, TEST_PRODUCTS, with_answer=False))
    return val, test


@pytest.fixture(scope="module")
def first_run(splits, sweep, tmp_path_factory):
    val, test = splits
    output = tmp_path_factory.mktemp("evaluation")
    result = evaluate(test, [str(sweep)], output, SELECT, trivial=_trivial(), selection=val, plots=False)
    return result, output


def _names(sweep: Path) -> tuple[str, str]:
    return f"{sweep.name}/trial_a/checkpoint_000010", f"{sweep.name}/trial_b/checkpoint_000010"


def test_only_the_chosen_checkpoint_base_and_trivial_are_generated_for_on_the_report_split(
    first_run, sweep
) -> None:
    result, output = first_run
    chosen = result.leaderboard[result.leaderboard["kind"] == "lora"].iloc[0]["checkpoint"]
    saved = pd.read_parquet(output / "predictions.parquet")
    on_val, on_test = saved[saved["split"] == "val"], saved[saved["split"] == "test"]
    assert set(on_val["checkpoint"]) == {*_names(sweep), "base", "trivial"}
    assert set(on_test["checkpoint"]) == {chosen, "base", "trivial"}
    assert set(on_val["product_code"]) == {p.product_code for p in VAL_PRODUCTS}
    assert set(on_test["product_code"]) == {p.product_code for p in TEST_PRODUCTS}
    assert sorted(result.scored_now) == sorted([*_names(sweep), "base", f"{chosen} (test)", "base (test)"])
    assert (result.ranked_on, result.reported_on) == ("val", "test")


def test_leaderboard_files_name_the_split_of_every_number(first_run, sweep) -> None:
    result, output = first_run
    payload = json.loads((output / "leaderboard.json").read_text())
    assert (payload["ranked_on"], payload["reported_on"]) == ("val", "test")
    rows = {row["checkpoint"]: row for row in payload["rows"]}
    assert payload["chosen"] in _names(sweep)
    assert {row["split"] for row in rows.values()} == {"val"}
    assert rows[payload["chosen"]]["n_examples"] == len(VAL_PRODUCTS)
    assert rows[payload["chosen"]]["test_n_examples"] == len(TEST_PRODUCTS)
    other = next(name for name in _names(sweep) if name != payload["chosen"])
    assert rows[other]["test_category_accuracy"] is None  # never scored on test
    assert rows["trivial"]["test_category_accuracy"] == 0.0  # test products' categories differ from trivial's
    csv = pd.read_csv(output / "leaderboard.csv")
    assert splits_of(csv) == ("val", "test")
    markdown = (output / "leaderboard.md").read_text()
    assert "Ranked on val (2 products)" in markdown and "Reported on test (2 products)" in markdown
    assert f"{payload['chosen']} (chosen)" in markdown


def _planted(name: str, content_key: str, products, right: bool) -> pd.DataFrame:
    """Cache rows as the evaluator writes them: every product answered right, or every one wrongly."""
    records = []
    for product in products:
        answer = product.answer() if right else format_answer("Plain Thing", "NOTHING", 1.0)
        parsed = parse_answer(answer)
        records.append(
            {
                "checkpoint": name,
                "content_key": content_key,
                "product_code": product.product_code,
                "prediction": answer,
                "pred_title": parsed.title,
                "pred_category": parsed.category,
                "pred_full_price": parsed.full_price,
                "parse_error": parsed.error,
                "load_error": None,
                "title": product.title,
                "category": product.category,
                "full_price": product.full_price,
            }
        )
    return pd.DataFrame.from_records(records)[list(OUTPUT_COLUMNS)]


def test_rank_follows_the_selection_split_even_when_the_report_split_disagrees(
    first_run, splits, sweep
) -> None:
    _, output = first_run
    val, test = splits
    good_on_val, good_on_test = _names(sweep)
    keys = {info.name: info.content_key for info in discover_checkpoints([str(sweep)])[0]}
    for dataset, products in ((val, VAL_PRODUCTS), (test, TEST_PRODUCTS)):
        folder = (
            output / "cache" / evaluation_signature(dataset.select_columns(TRUTH_COLUMNS).to_pandas(), SELECT)
        )
        for name in (good_on_val, good_on_test):
            right = (name == good_on_val) == (products == VAL_PRODUCTS)
            _planted(name, keys[name], products, right).to_parquet(
                folder / f"{keys[name]}.parquet", index=False
            )

    selected = evaluate(test, [str(sweep)], output, SELECT, trivial=_trivial(), selection=val, plots=False)
    assert selected.scored_now == []  # everything came from the cache, nothing new was generated
    board = selected.leaderboard.set_index("checkpoint")
    assert selected.leaderboard.iloc[0]["checkpoint"] == good_on_val
    assert board.loc[good_on_val, "category_accuracy"] == 1.0  # its validation figure, which chose it
    assert board.loc[good_on_val, "test_category_accuracy"] == 0.0  # its honest test figure
    assert math.isnan(board.loc[good_on_test, "test_category_accuracy"])  # a better test score never seen
    report = reported_rows(selected.leaderboard).set_index("checkpoint")
    assert report.loc[good_on_val, "split"] == "test" and report.loc[good_on_val, "title_exact_match"] == 0.0

    # The same cache ranked on test alone picks the other checkpoint: the choice above did not look at test.
    on_test = evaluate(test, [str(sweep)], output, TEST_ONLY, trivial=_trivial(), plots=False)
    assert on_test.scored_now == [] and on_test.leaderboard.iloc[0]["checkpoint"] == good_on_test


def test_reported_rows_without_a_separate_report_split_are_the_leaderboard_itself() -> None:
    scores = pd.DataFrame(
        {
            "checkpoint": ["a", "trivial"],
            "kind": ["lora", "trivial"],
            "n_examples": [4, 4],
            "category_accuracy": [1, 0],
        }
    )
    board = label_split(rank_contestants(scores, "category_accuracy", tie_breakers=()), "test")
    assert splits_of(board) == ("test", "test")
    pd.testing.assert_frame_equal(reported_rows(board), board)
    assert to_markdown(board, "category_accuracy").startswith("Ranked and reported on test (4 products):")
    report = attach_report(board, scores.assign(category_accuracy=[0.5, 0.25]).iloc[[0]], "val")
    assert splits_of(report) == ("test", "val")
    assert reported_rows(report)["category_accuracy"].tolist() == [0.5]


def test_unknown_select_on_split_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="evaluate.select_on"):
        config_from_dict({"evaluate": {"select_on": "holdout"}}, source="x.yaml")


@pytest.fixture(scope="module")
def catalog_without_val(tmp_path_factory) -> Path:
    from phi3v_ray.data.split import split_catalog
    from phi3v_ray.data.synth import synth_catalog

    directory = tmp_path_factory.mktemp("catalog") / "sample"
    synth_catalog(directory, 24, seed=3, broken_url_share=0.0)
    split_catalog(directory, ratios=(0.9, 0.0, 0.1))
    return directory


def test_select_on_an_empty_split_is_refused_before_any_work_naming_the_flag(
    sweep, catalog_without_val, capsys
) -> None:
    from test_cli_run_inputs import assert_one_error_line, run_cli

    argv = [
        "evaluate",
        "--checkpoints",
        str(sweep),
        "--catalog",
        str(catalog_without_val),
        "--select-on",
        "val",
    ]
    code, _, err, seconds = run_cli(argv, capsys)
    assert code == 2 and seconds < 3
    assert_one_error_line(err, "val split (evaluate.select_on) is empty", "--select-on")
