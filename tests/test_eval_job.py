"""End-to-end evaluation on the tiny model: real peft adapters, real local Ray Data actors, real offline W&B.

One LoRA adapter is trained to memorise four synthetic products; an untrained adapter, the base model, the
trivial predictor, a corrupt adapter and a checkpoint with a broken meta.json compete with it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from phi3v_ray.config import EvalSection, WandbSection
from phi3v_ray.evaluation.scoring import evaluate
from phi3v_ray.evaluation.trivial import TrivialPredictor

from support.synthetic_checkpoints import PRODUCTS, make_lora_checkpoint, prepared_rows

TRAIN_STEPS = 150
TRAIN_LR = 5e-3
MAX_NEW_TOKENS = 24  # the longest memorised answer is 19 tokens + <|end|>
SETTINGS = EvalSection(batch_size=4, max_new_tokens=MAX_NEW_TOKENS, cpus_per_actor=1.0)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """A sweep directory: trained, untrained, corrupt-weights and bad-meta checkpoints side by side."""
    root = tmp_path_factory.mktemp("sweep")
    trained = make_lora_checkpoint(root / "trial_a" / "checkpoint_000150", steps=TRAIN_STEPS, lr=TRAIN_LR)
    make_lora_checkpoint(root / "trial_b" / "checkpoint_000000", steps=0)
    corrupt = root / "trial_c" / "checkpoint_000150"
    shutil.copytree(trained, corrupt)
    weights = corrupt / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: len(weights.read_bytes()) // 2])
    bad_meta = root / "trial_d" / "checkpoint_000000"
    shutil.copytree(trained, bad_meta)
    (bad_meta / "meta.json").write_text("{not json")
    return root


def _trivial() -> TrivialPredictor:
    return TrivialPredictor.fit(
        [p.title for p in PRODUCTS], [p.category for p in PRODUCTS], [p.full_price for p in PRODUCTS]
    )


@pytest.fixture(scope="module")
def first_run(ray_local, sweep, processor, tmp_path_factory):
    dataset = ray_local.data.from_items(prepared_rows(processor, with_answer=False))
    output = tmp_path_factory.mktemp("evaluation")
    result = evaluate(dataset, [str(sweep)], output, SETTINGS, trivial=_trivial())
    return result, output, dataset


def _by_name(result) -> pd.DataFrame:
    return result.leaderboard.set_index("checkpoint")


def test_trained_checkpoint_ranks_first_and_beats_trivial_predictor(first_run, sweep) -> None:
    result, _, _ = first_run
    board = _by_name(result)
    trained, untrained = f"{sweep.name}/trial_a/checkpoint_000150", f"{sweep.name}/trial_b/checkpoint_000000"
    assert result.leaderboard.iloc[0]["checkpoint"] == trained
    assert board.loc[trained, "category_accuracy"] == 1.0
    assert board.loc[trained, "title_exact_match"] == 1.0
    assert board.loc[trained, "price_within_10pct"] == 1.0
    # Honest comparison: the trivial predictor (majority category, median price) is on the board with its scores.
    assert board.loc["trivial", "category_accuracy"] == 0.25
    assert board.loc["trivial", "rank"] > board.loc[trained, "rank"]
    assert board.loc[untrained, "rank"] > board.loc[trained, "rank"]
    assert board.loc[untrained, "category_accuracy"] <= board.loc["trivial", "category_accuracy"]
    assert set(board["kind"]) == {"lora", "base", "trivial"}


def test_corrupt_checkpoint_is_reported_and_the_others_are_scored(first_run, sweep) -> None:
    result, output, _ = first_run
    reasons = {b.name: b.reason for b in result.broken}
    corrupt, bad_meta = f"{sweep.name}/trial_c/checkpoint_000150", f"{sweep.name}/trial_d/checkpoint_000000"
    assert set(reasons) == {corrupt, bad_meta}
    assert "adapter_model.safetensors" in reasons[corrupt]
    assert "meta.json: not valid JSON" in reasons[bad_meta]
    assert corrupt not in set(result.leaderboard["checkpoint"])
    assert len(result.leaderboard) == 4  # trained, untrained, base, trivial
    saved = pd.read_parquet(output / "predictions.parquet")
    corrupt_rows = saved[saved["checkpoint"] == corrupt]
    assert len(corrupt_rows) == len(PRODUCTS) and corrupt_rows["load_error"].notna().all()
    assert {entry["name"] for entry in json.loads((output / "broken.json").read_text())} == set(reasons)


def test_every_product_gets_a_row_per_contestant_with_parsed_fields(first_run) -> None:
    result, output, _ = first_run
    saved = pd.read_parquet(output / "predictions.parquet")
    scored = saved[saved["load_error"].isna()]
    assert scored.groupby("checkpoint")["product_code"].nunique().eq(len(PRODUCTS)).all()
    assert {"prediction", "pred_title", "pred_category", "pred_full_price", "parse_error"} <= set(
        saved.columns
    )
    for name in ("leaderboard.csv", "leaderboard.json", "leaderboard.md", "best_price_scatter.png"):
        assert (output / name).is_file()


def test_rerun_reuses_scores_of_unchanged_checkpoints(first_run, sweep) -> None:
    result, output, dataset = first_run
    again = evaluate(dataset, [str(sweep)], output, SETTINGS, trivial=_trivial(), plots=False)
    assert again.scored_now == []
    assert set(again.reused) == {
        "base",
        f"{sweep.name}/trial_a/checkpoint_000150",
        f"{sweep.name}/trial_b/checkpoint_000000",
    }
    pd.testing.assert_frame_equal(again.leaderboard, result.leaderboard)


def test_wandb_evaluation_run_holds_leaderboard_and_product_samples(first_run, tmp_path) -> None:
    from phi3v_ray.evaluation.wandb_report import log_evaluation

    from support.wandb_files import read_offline_run

    result, _, dataset = first_run
    samples = dataset.take(2)
    run_dir = log_evaluation(
        result.leaderboard,
        result.predictions,
        samples,
        section=WandbSection(mode="offline", project="phi3v-eval-test"),
        group="sweep-test",
        directory=tmp_path,
    )
    # Returned only once W&B has written the whole run: read at once, with no waiting, it must be complete.
    stored = read_offline_run(run_dir)
    assert stored.complete and stored.exit_code == 0
    assert (stored.group, stored.job_type) == ("sweep-test", "evaluation")
    assert stored.config["primary_metric"] == "category_accuracy"
    logged = next(row for row in stored.history if "eval/leaderboard/path" in row)
    assert logged["eval/leaderboard/_type"] == "table-file"
    table = json.loads((run_dir / "files" / logged["eval/leaderboard/path"]).read_text())
    column = table["columns"].index("checkpoint")
    assert table["data"][0][column] == result.leaderboard.iloc[0]["checkpoint"]
    sample_table = json.loads((run_dir / "files" / logged["eval/samples/path"]).read_text())
    assert len(sample_table["data"]) == 2
    top_answer = sample_table["columns"].index(f"answer: {result.leaderboard.iloc[0]['checkpoint']}")
    assert sample_table["data"][0][top_answer].startswith("Product: ")


def test_batched_generation_equals_one_at_a_time(sweep, processor) -> None:
    from phi3v_ray.evaluation.predictor import CheckpointPredictor

    adapter = sweep / "trial_a" / "checkpoint_000150" / "adapter"
    contestants = [
        {"name": "base", "kind": "base", "path": None, "content_key": "b"},
        {"name": "trained", "kind": "lora", "path": str(adapter), "content_key": "t"},
    ]
    predictor = CheckpointPredictor("tiny", contestants, max_new_tokens=MAX_NEW_TOKENS)
    # Different photo widths give prompts of different lengths, so the batch really is left-padded.
    rows = prepared_rows(processor, with_answer=False, widths=[56, 112, 56, 168])
    assert len({len(row["input_ids"]) for row in rows}) > 1

    def as_batch(items: list[dict]) -> dict:
        return {key: [item[key] for item in items] for key in items[0]} | {
            key: np.array([item[key] for item in items])
            for key in ("product_code", "full_price", "title", "category")
        }

    batched = predictor(as_batch(rows))
    singles = [predictor(as_batch([row])) for row in rows]
    for contestant in ("base", "trained"):
        together = batched["prediction"][batched["checkpoint"] == contestant].tolist()
        alone = [single["prediction"][single["checkpoint"] == contestant][0] for single in singles]
        assert together == alone


def test_mixed_adapter_generate_equals_one_contestant_at_a_time(sweep, processor) -> None:
    """The trained adapter carries a projector (as training writes it); routing it per row must not change answers."""
    from phi3v_ray.evaluation.predictor import CheckpointPredictor

    contestants = [
        {"name": "base", "kind": "base", "path": None, "content_key": "b"},
        {"name": "trained", "kind": "lora", "path": str(sweep / "trial_a" / "checkpoint_000150" / "adapter")},
        {
            "name": "untrained",
            "kind": "lora",
            "path": str(sweep / "trial_b" / "checkpoint_000000" / "adapter"),
        },
    ]
    predictor = CheckpointPredictor(
        "tiny", [{"content_key": c["name"]} | c for c in contestants], max_new_tokens=MAX_NEW_TOKENS
    )
    assert predictor._adapters_routable_per_row(), (
        "the projector is saved layer by layer, so rows can be routed"
    )
    examples = prepared_rows(processor, with_answer=False, widths=[56, 112, 56, 168])
    answers = predictor.mixed_answers(predictor.specs, examples)
    mixed = dict(zip(["base", "trained", "untrained"], answers, strict=True))
    collated = processor.collate(examples, padding_side="left")
    collated.pop("labels", None)
    for spec in predictor.specs:
        assert mixed[spec.name] == predictor.answers_for(spec, collated), spec.name
    assert mixed["trained"] != mixed["untrained"]


def test_unscorable_message_lists_each_broken_contestant_or_says_none_was_given() -> None:
    from phi3v_ray.evaluation.discovery import BrokenCheckpoint
    from phi3v_ray.evaluation.scoring import unscorable_message

    assert unscorable_message([]) == "no contestant could be scored: none given"
    broken = [
        BrokenCheckpoint("a", Path("a"), "meta.json missing"),
        BrokenCheckpoint("b", Path("b"), "bad adapter"),
    ]
    assert unscorable_message(broken) == "no contestant could be scored: a: meta.json missing; b: bad adapter"


def test_answer_images_gives_the_memorised_answers_for_photos_on_disk(sweep, tmp_path) -> None:
    from phi3v_ray.evaluation.answering import answer_images

    paths = []
    for product in PRODUCTS:
        path = tmp_path / f"{product.product_code}.png"
        product.image().save(path)
        paths.append(path)
    answers = answer_images(sweep / "trial_a" / "checkpoint_000150", paths, max_new_tokens=MAX_NEW_TOKENS)
    assert [answer.image for answer in answers] == [str(path) for path in paths]
    assert [answer.parsed.title for answer in answers] == [product.title for product in PRODUCTS]
    assert [answer.parsed.category for answer in answers] == [product.category for product in PRODUCTS]
