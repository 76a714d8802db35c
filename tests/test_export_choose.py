"""Which checkpoint `phi3v-ray export` takes (a leaderboard's winner, a sweep's, one directory) and says why; the
model card it writes; and every bad input it refuses with one line naming the path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from phi3v_ray.checkpoint import META_FILE
from phi3v_ray.cli import main
from phi3v_ray.config import ModelSection
from phi3v_ray.errors import CheckpointError, ConfigError
from phi3v_ray.evaluation.leaderboard import write_leaderboard
from phi3v_ray.export.choose import choose_checkpoint
from phi3v_ray.export.run import export_choice

from support.export_checkpoints import experiment_settings, make_rich_lora_checkpoint

TRIALS = {"trial_a": 0.5, "trial_b": 0.9}  # trial_a has the lower val_loss; the leaderboard prefers trial_b


def _board_rows(sweep: str) -> list[dict]:
    metrics = ("category_accuracy", "title_token_f1", "price_within_25pct", "price_median_ape", "parse_rate")
    rows = [
        ("base", "base", 0.875),
        (f"{sweep}/trial_b/checkpoint_000007", "lora", 0.625),
        (f"{sweep}/trial_a/checkpoint_000007", "lora", 0.5),
        ("trivial", "trivial", 0.25),
    ]
    return [
        {"rank": rank, "checkpoint": name, "kind": kind, "n_examples": 8}
        | dict.fromkeys(metrics, 0.0)
        | {"category_accuracy": accuracy, "price_median_ape": 0.1 * rank}
        for rank, (name, kind, accuracy) in enumerate(rows, start=1)
    ]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Two trials' checkpoints and the sweep's evaluation/leaderboard.json (as `evaluate` writes it)."""
    root = tmp_path_factory.mktemp("export_choose") / "sweep"
    for seed, (trial, val_loss) in enumerate(TRIALS.items()):
        make_rich_lora_checkpoint(
            root / trial / "checkpoint_000007", seed=seed, metrics={"val_loss": val_loss}
        )
    write_leaderboard(pd.DataFrame(_board_rows(root.name)), root / "evaluation", "category_accuracy")
    return root


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    return err


def test_leaderboard_file_exports_the_best_ranked_checkpoint_and_says_why(sweep, tmp_path, capsys) -> None:
    out = tmp_path / "best"
    board = sweep / "evaluation" / "leaderboard.json"
    assert main(["export", "--checkpoint", str(board), "--out", str(out), "--dtype", "float32"]) == 0
    said = capsys.readouterr().out
    assert f"exporting {sweep.name}/trial_b/checkpoint_000007: rank 2 of 4" in said
    assert "category_accuracy = 0.625" in said and "base (rank 1) ranked higher" in said
    card = (out / "README.md").read_text()
    assert "(trial trial_b)" in card
    assert "| category_accuracy | 0.625 | 0.25 |" in card  # this checkpoint's metric beside the trivial one
    assert "Rank **2** of 4" in card


def test_model_card_has_front_matter_and_no_machine_paths_or_secrets(sweep, tmp_path) -> None:
    out = tmp_path / "card"
    export_choice(choose_checkpoint(sweep), out, dtype="float32")
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\n") and "\n---\n" in card
    assert "pipeline_tag: image-text-to-text" in card and "- category_accuracy" in card
    assert '"finetune.rank": 4' in card and '"optim.lr": 0.005' in card
    for private in (str(sweep.parent), "/home/someone", "sk-never-in-a-card", "/tmp/"):
        assert private not in card, private
    for name in (
        "config.json",
        "tokenizer_config.json",
        "generation_config.json",
        "preprocessor_config.json",
    ):
        assert str(sweep.parent) not in (out / name).read_text(), name


def test_sweep_directory_exports_its_leaderboard_winner(sweep) -> None:
    choice = choose_checkpoint(sweep)
    assert choice.path == sweep / "trial_b" / "checkpoint_000007"
    assert choice.row is not None and choice.row["rank"] == 2


def test_sweep_without_leaderboard_takes_the_lowest_validation_loss(sweep, tmp_path) -> None:
    bare = tmp_path / "bare_sweep"
    shutil.copytree(sweep, bare, ignore=shutil.ignore_patterns("evaluation"))
    choice = choose_checkpoint(bare)
    assert choice.path == bare / "trial_a" / "checkpoint_000007"
    assert "lowest val_loss (0.5) of 2 checkpoints" in choice.reason


def test_one_checkpoint_finds_its_row_in_the_sweeps_leaderboard(sweep) -> None:
    choice = choose_checkpoint(sweep / "trial_a" / "checkpoint_000007")
    assert choice.reason == "the checkpoint given" and choice.row["category_accuracy"] == 0.5


def test_leaderboard_pointing_at_a_missing_checkpoint_is_named(sweep, tmp_path, capsys) -> None:
    elsewhere = tmp_path / "moved" / "evaluation"
    write_leaderboard(pd.DataFrame(_board_rows("gone")), elsewhere, "category_accuracy")
    board = elsewhere / "leaderboard.json"
    assert main(["export", "--checkpoint", str(board), "--out", str(tmp_path / "x")]) == 2
    err = _one_error_line(capsys)
    assert f"{board}: its winner 'gone/trial_b/checkpoint_000007' points at a missing checkpoint" in err
    assert not (tmp_path / "x").exists()


def _with_base(checkpoint: Path, target: Path, base_path: str) -> Path:
    shutil.copytree(checkpoint, target)
    meta = json.loads((target / META_FILE).read_text())
    meta["base_model"] = {**meta["base_model"], "preset": None, "path": base_path}
    (target / META_FILE).write_text(json.dumps(meta))
    return target


def test_base_that_is_not_available_is_named(sweep, tmp_path, capsys) -> None:
    missing = tmp_path / "no_such_base"
    checkpoint = _with_base(sweep / "trial_a" / "checkpoint_000007", tmp_path / "ckpt", str(missing))
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "x")]) == 2
    err = _one_error_line(capsys)
    # Named by the meta.json that names the base (checkpoint.py's own check, or the export's when that passes).
    assert err.startswith(f"error: {checkpoint / META_FILE}: base")
    assert str(missing) in err and ("not available" in err or "cannot be found" in err)


def test_base_with_another_fingerprint_is_refused(tmp_path, capsys) -> None:
    from phi3v_ray.model.configuration import Phi3VConfig
    from phi3v_ray.model.loading import build_model, save_pretrained
    from phi3v_ray.model.tokenizer import tiny_tokenizer

    bases = {}
    for seed in (0, 1):
        bases[seed] = tmp_path / f"base_seed{seed}"
        save_pretrained(build_model(Phi3VConfig.preset("tiny"), seed=seed), bases[seed])
        tiny_tokenizer().save_pretrained(str(bases[seed]))
    trained = make_rich_lora_checkpoint(
        tmp_path / "trained" / "checkpoint_000001", base=ModelSection(path=str(bases[0]), num_crops=4)
    )
    assert main(["export", "--checkpoint", str(trained), "--out", str(tmp_path / "ok")]) == 0
    moved = _with_base(trained, tmp_path / "moved" / "checkpoint_000001", str(bases[1]))
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(moved), "--out", str(tmp_path / "x")]) == 2
    err = _one_error_line(capsys)
    assert f"{moved / META_FILE}: base model '{bases[1]}' has a different fingerprint" in err


def test_output_directory_that_is_not_empty_needs_overwrite(sweep, tmp_path, capsys) -> None:
    checkpoint = str(sweep / "trial_a" / "checkpoint_000007")
    out = tmp_path / "out"
    assert main(["export", "--checkpoint", checkpoint, "--out", str(out), "--adapter-only"]) == 0
    capsys.readouterr()
    assert main(["export", "--checkpoint", checkpoint, "--out", str(out)]) == 2
    assert f"{out}: output directory is not empty; pass --overwrite" in _one_error_line(capsys)
    assert main(["export", "--checkpoint", checkpoint, "--out", str(out), "--overwrite"]) == 0
    assert (out / "config.json").is_file() and not (out / "adapter_config.json").exists()
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["export", "--checkpoint", checkpoint, "--out", str(out), "--overwrite"]) == 2
    assert "holds notes.txt, which an export never writes" in _one_error_line(capsys)
    assert (out / "notes.txt").read_text() == "mine"


def test_dtype_the_merge_cannot_produce_is_refused(sweep, tmp_path) -> None:
    choice = choose_checkpoint(sweep / "trial_a" / "checkpoint_000007")
    with pytest.raises(ConfigError, match=r"--dtype 'int8': cannot export in it; expected one of float32"):
        export_choice(choice, tmp_path / "x", dtype="int8")
    assert not (tmp_path / "x").exists()


def test_adapter_only_of_a_full_fine_tune_is_refused(tmp_path) -> None:
    from support.export_checkpoints import make_full_checkpoint

    checkpoint = make_full_checkpoint(tmp_path / "full" / "checkpoint_000001")
    with pytest.raises(CheckpointError, match="a full fine-tune has no adapter"):
        export_choice(choose_checkpoint(checkpoint), tmp_path / "x", adapter_only=True)


def test_evaluate_export_best_exports_the_leaderboard_winner(ray_local, tmp_path, capsys) -> None:
    from phi3v_ray.data.split import split_catalog
    from phi3v_ray.data.synth import synth_catalog

    catalog = synth_catalog(tmp_path / "catalog", 40, seed=3, broken_url_share=0.0)
    split_catalog(catalog)
    sweep = tmp_path / "sweep"
    for seed, trial in enumerate(("trial_a", "trial_b")):
        make_rich_lora_checkpoint(
            sweep / trial / "checkpoint_000001",
            seed=seed,
            experiment=experiment_settings(catalog_dir=str(catalog)),
        )
    out = tmp_path / "best"
    code = main(
        ["evaluate", "--checkpoints", str(sweep), "--catalog", str(catalog), "--max-examples", "2"]
        + ["--batch-size", "2", "--no-plots", "--output", str(tmp_path / "evaluation")]
        + ["--set", "evaluate.max_new_tokens=4", "--export-best", str(out)]
    )
    assert code == 0, capsys.readouterr().err
    board = json.loads((tmp_path / "evaluation" / "leaderboard.json").read_text())
    best = next(row for row in board["rows"] if row["kind"] not in ("base", "trivial"))
    assert f"exported {best['checkpoint']} (rank {best['rank']} of" in capsys.readouterr().out
    card = (out / "README.md").read_text()
    assert f"(trial {best['checkpoint'].split('/')[1]})" in card
    counts = pd.read_parquet(catalog / "splits.parquet")["split"].value_counts()
    assert f"- train rows: {counts['train']}" in card and f"- test rows: {counts['test']}" in card
    assert (out / "model.safetensors.index.json").is_file()


def test_checkpoint_uri_exports_like_its_local_copy(sweep, bucket, tmp_path, monkeypatch) -> None:
    from phi3v_ray.storage import location, upload_tree

    monkeypatch.setenv("PHI3V_CHECKPOINT_CACHE", str(tmp_path / "cache"))
    local = sweep / "trial_a" / "checkpoint_000007"
    uri = f"{bucket}/runs/trial_a/checkpoint_000007"
    upload_tree(local, location(uri))
    for source, name in ((uri, "from_uri"), (str(local), "local")):
        assert (
            main(["export", "--checkpoint", source, "--out", str(tmp_path / name), "--dtype", "float32"]) == 0
        )
    shards = sorted((tmp_path / "local").glob("model-*.safetensors"))
    assert shards
    for shard in shards:
        assert (tmp_path / "from_uri" / shard.name).read_bytes() == shard.read_bytes()


def test_model_card_publishes_the_held_out_figures_of_a_checkpoint_chosen_on_validation() -> None:
    from phi3v_ray.export.model_card import reported_figures

    # evaluate --select-on val --split test: the plain columns are val (the choice), test_* the held-out report.
    row = {"rank": 1, "split": "val", "n_examples": 8, "category_accuracy": 0.9, "price_median_ape": 0.1}
    row |= {"test_n_examples": 16, "test_category_accuracy": 0.4, "test_price_median_ape": 0.3}
    figures, reported_on, ranked_on = reported_figures(row)
    assert (reported_on, ranked_on) == ("test", "val")
    assert (
        figures["category_accuracy"] == 0.4
        and figures["n_examples"] == 16
        and figures["price_median_ape"] == 0.3
    )
    plain = {"rank": 2, "split": "test", "n_examples": 16, "category_accuracy": 0.5}
    assert reported_figures(plain) == ({"n_examples": 16, "category_accuracy": 0.5}, "test", "test")
