"""Bad input to the model/run commands (train, tune, evaluate, predict, demo, cluster check): one clear line naming
the flag, file or key, before any work starts; nothing of the user's touched; partial failures still answer the rest.

All commands run in-process through `phi3v_ray.cli.main`, as a user would type them. The checkpoint is a real
(untrained) LoRA checkpoint of the tiny model, made once per module; the catalog is a real synthetic one.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from phi3v_ray import __version__, cli
from phi3v_ray.checkpoint import CheckpointMeta, parse_meta, read_meta, storage_relative_base, write_meta
from phi3v_ray.config import ModelSection, load_experiment
from phi3v_ray.errors import CheckpointError

from support.synthetic_checkpoints import PRODUCTS, make_lora_checkpoint

DEMO_YAML = str(Path(__file__).resolve().parents[1] / "experiments" / "demo.yaml")


def run_cli(argv: list[str], capsys) -> tuple[int, str, str, float]:
    """(exit code, stdout, stderr, seconds) of one in-process command; argparse's own exits count too."""
    started = time.perf_counter()
    try:
        code = cli.main(argv)
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    seconds = time.perf_counter() - started
    captured = capsys.readouterr()
    return code, captured.out, captured.err, seconds


def assert_one_error_line(err: str, *words: str) -> str:
    """Exactly one `error:` line, no traceback, and it names every one of `words`; returns the line."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> Path:
    """A sweep directory with two real checkpoints (val_loss 0.9 at step 10, 0.4 at step 5) and photos on disk."""
    root = tmp_path_factory.mktemp("cli_inputs")
    first = make_lora_checkpoint(root / "sweep" / "trial_a" / "checkpoint_000010", steps=0)
    second = root / "sweep" / "trial_b" / "checkpoint_000005"
    shutil.copytree(first, second)
    for directory, step, loss in ((first, 10, 0.9), (second, 5, 0.4)):
        meta = read_meta(directory)
        write_meta(directory, meta.model_copy(update={"step": step, "metrics": {"val_loss": loss}}))
    for product in PRODUCTS[:2]:
        product.image().save(root / f"{product.product_code}.png")
    (root / "corrupt.jpg").write_bytes(b"these bytes are no JPEG")
    return root


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> Path:
    """A small split catalog (synthetic photos) whose val split is empty: ratios 0.9,0,0.1."""
    from phi3v_ray.data.split import split_catalog
    from phi3v_ray.data.synth import synth_catalog

    directory = tmp_path_factory.mktemp("catalog") / "sample"
    synth_catalog(directory, 24, seed=3, broken_url_share=0.0)
    split_catalog(directory, ratios=(0.9, 0.0, 0.1))
    return directory


# ------------------------------------------------------------------------------------------------ help and version


def test_version_flag_prints_the_package_version(capsys) -> None:
    code, out, _, _ = run_cli(["--version"], capsys)
    assert code == 0 and out.strip() == f"phi3v-ray {__version__}"


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        (["demo"], ["(default: 3600)", "(default: demo-output)", "(default: 1200)", "(default: 2)"]),
        (["predict"], ["(default: 48)"]),
    ],
)
def test_help_shows_every_default(command: list[str], shown: list[str], capsys) -> None:
    code, out, _, _ = run_cli([*command, "--help"], capsys)
    assert code == 0
    flat = " ".join(out.split())
    for text in shown:
        assert text in flat


def test_typical_flow_in_help_gives_evaluate_its_checkpoints_and_tune_a_concurrency_that_fits(capsys) -> None:
    _, out, _, _ = run_cli(["--help"], capsys)
    flow = out[out.index("typical flow:") :]
    assert "evaluate experiments/demo.yaml --checkpoints runs/demo-sweep" in flow
    tune_line = next(line for line in flow.splitlines() if " tune " in line)
    assert "--set tune.max_concurrent_trials=1" in tune_line
    # The tune line as shown (made a dry run) is runnable on this machine: exit 0.
    shown = [
        DEMO_YAML if part == "experiments/demo.yaml" else part for part in tune_line.split("#")[0].split()[1:]
    ]
    code, out, err, _ = run_cli([*shown, "--dry-run"], capsys)
    assert code == 0, out + err
    assert "runs up to 1 trial(s) at once" in out


def test_evaluate_without_checkpoints_suggests_the_flag(capsys) -> None:
    code, _, err, seconds = run_cli(["evaluate", DEMO_YAML], capsys)
    assert code == 2 and seconds < 3
    assert_one_error_line(err, "evaluate.checkpoints is empty", "--checkpoints")


def test_tune_dry_run_that_cannot_run_here_exits_non_zero_and_says_cpu_is_kept_for_data(capsys) -> None:
    code, out, err, _ = run_cli(
        ["tune", DEMO_YAML, "--dry-run", "--set", "tune.max_concurrent_trials=4096"], capsys
    )
    assert code == 2
    assert "not runnable on this machine" in out
    assert "kept free for Ray Data" in out
    assert "Traceback" not in err


# ------------------------------------------------------------------------------------- flag values at parse time


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["predict", "--checkpoint", "x", "a.png", "--max-new-tokens", "0"], "--max-new-tokens"),
        (["predict", "--checkpoint", "x", "a.png", "--max-new-tokens", "-3"], "--max-new-tokens"),
        (["evaluate", "--checkpoints", "x", "--max-examples", "0"], "--max-examples"),
        (["evaluate", "--checkpoints", "x", "--batch-size", "0"], "--batch-size"),
        (["demo", "--rows", "0"], "--rows"),
        (["demo", "--steps", "-1"], "--steps"),
    ],
)
def test_non_positive_counts_are_refused_naming_the_flag_typed(
    argv: list[str], flag: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    code, _, err, seconds = run_cli(argv, capsys)
    assert code == 2 and seconds < 3
    line = assert_one_error_line(err, flag, "at least 1")
    assert "max_train_examples" not in line and "demo.yaml" not in line
    assert list(tmp_path.iterdir()) == []  # demo made no --out directory (default ./demo-output)


def test_demo_out_that_is_a_file_is_refused_before_any_work_and_the_file_is_kept(
    tmp_path: Path, capsys
) -> None:
    user_file = tmp_path / "notes.txt"
    user_file.write_text("mine")
    for out in (user_file, user_file / "sub"):
        code, _, err, seconds = run_cli(["demo", "--out", str(out)], capsys)
        assert code == 2 and seconds < 3
        assert_one_error_line(err, "--out", "not a directory")
    assert user_file.read_text() == "mine"


def test_demo_leaves_no_empty_out_directory_when_it_fails_before_writing(tmp_path: Path, capsys) -> None:
    out = tmp_path / "demo-out"
    code, _, err, _ = run_cli(["demo", "--out", str(out), "--set", "optim.lr=-1"], capsys)
    assert code == 2
    assert_one_error_line(err, "optim.lr")
    assert not out.exists()


# --------------------------------------------------------------------------------------------------- --set syntax


def test_set_ratios_takes_the_same_comma_form_as_data_split() -> None:
    assert load_experiment(DEMO_YAML, ["data.ratios=0.7,0.2,0.1"]).data.ratios == (0.7, 0.2, 0.1)
    assert load_experiment(DEMO_YAML, ["data.ratios=[0.7, 0.2, 0.1]"]).data.ratios == (0.7, 0.2, 0.1)


def test_set_ratios_in_comma_form_is_still_checked(capsys) -> None:
    code, _, err, _ = run_cli(["train", DEMO_YAML, "--dry-run", "--set", "data.ratios=0.7,0.2,0.2"], capsys)
    assert code == 2
    assert_one_error_line(err, "data.ratios", "summing to 1")


def test_set_with_a_dotted_search_space_key_sets_that_key() -> None:
    config = load_experiment(
        DEMO_YAML,
        [
            "tune.search_space.optim.weight_decay={choice: [0.0, 0.1]}",
            "tune.search_space.lora.rank={choice: [2]}",
        ],
    )
    assert config.tune.search_space["optim.weight_decay"] == {"choice": [0.0, 0.1]}
    assert config.tune.search_space["finetune.rank"] == {
        "choice": [2]
    }  # old section name read as the new one
    assert "optim" not in config.tune.search_space and "lora" not in config.tune.search_space


# ------------------------------------------------------------------------------------------------------- evaluate


def test_evaluate_output_that_is_a_file_is_refused_before_any_work(
    checkpoints: Path, catalog: Path, capsys
) -> None:
    user_file = checkpoints / "leaderboard-notes.txt"
    user_file.write_text("mine")
    argv = [
        "evaluate",
        "--checkpoints",
        str(checkpoints / "sweep"),
        "--catalog",
        str(catalog),
        "--split",
        "test",
    ]
    code, _, err, seconds = run_cli([*argv, "--output", str(user_file)], capsys)
    assert code == 2 and seconds < 3
    assert_one_error_line(err, "--output", str(user_file), "not a directory")
    assert user_file.read_text() == "mine"


def test_evaluate_unknown_primary_metric_is_refused_listing_the_valid_ones(checkpoints: Path, capsys) -> None:
    argv = ["evaluate", "--checkpoints", str(checkpoints / "sweep"), "--primary-metric", "accuracy"]
    code, _, err, seconds = run_cli(argv, capsys)
    assert code == 2 and seconds < 3
    assert_one_error_line(err, "--primary-metric", "'accuracy'", "category_accuracy", "price_median_ape")


def test_evaluate_where_every_checkpoint_is_broken_fails_before_work_naming_each(
    checkpoints: Path, catalog: Path, tmp_path: Path, capsys
) -> None:
    sweep = tmp_path / "broken-sweep"
    for trial in ("trial_a", "trial_b"):
        shutil.copytree(checkpoints / "sweep" / trial, sweep / trial)
    (next((sweep / "trial_a").glob("checkpoint_*")) / "adapter" / "adapter_model.safetensors").unlink()
    (next((sweep / "trial_b").glob("checkpoint_*")) / "meta.json").write_text("{not json")
    argv = ["evaluate", "--checkpoints", str(sweep), "--catalog", str(catalog), "--split", "test"]
    code, _, err, seconds = run_cli(argv, capsys)
    assert code == 2 and seconds < 3
    assert_one_error_line(
        err, "none of the 2", "trial_a", "adapter_model.safetensors", "trial_b", "not valid JSON"
    )


def test_evaluate_leaderboard_without_any_trained_checkpoint_counts_as_failure() -> None:
    from phi3v_ray.evaluation.from_config import trained_rows

    only_references = pd.DataFrame({"checkpoint": ["base", "trivial"], "kind": ["base", "trivial"]})
    assert trained_rows(only_references) == 0
    assert (
        trained_rows(pd.concat([only_references, pd.DataFrame({"checkpoint": ["t"], "kind": ["lora"]})])) == 1
    )


def test_evaluate_on_an_empty_split_is_refused_naming_the_split(
    checkpoints: Path, catalog: Path, capsys
) -> None:
    argv = [
        "evaluate",
        "--checkpoints",
        str(checkpoints / "sweep"),
        "--catalog",
        str(catalog),
        "--split",
        "val",
    ]
    code, _, err, seconds = run_cli(argv, capsys)
    assert code == 2 and seconds < 3
    assert_one_error_line(err, "--catalog", "val split is empty")


# -------------------------------------------------------------------------------------------------------- predict


def test_predict_on_a_sweep_says_which_checkpoint_it_picked_and_why(checkpoints: Path) -> None:
    from phi3v_ray.evaluation.answering import choose_checkpoint

    chosen = choose_checkpoint(checkpoints / "sweep")
    assert chosen.info.path.parent.name == "trial_b"  # val_loss 0.4 beats 0.9, though its step is lower
    assert "trial_b/checkpoint_000005" in chosen.note and "lowest val_loss 0.4" in chosen.note
    assert choose_checkpoint(checkpoints / "sweep" / "trial_a" / "checkpoint_000010").note is None


def test_predict_without_val_loss_picks_the_latest_step_and_says_so(
    checkpoints: Path, tmp_path: Path
) -> None:
    from phi3v_ray.evaluation.answering import choose_checkpoint

    sweep = shutil.copytree(checkpoints / "sweep", tmp_path / "sweep")
    for meta_path in sweep.rglob("meta.json"):
        write_meta(meta_path.parent, parse_meta(meta_path).model_copy(update={"metrics": {}}))
    chosen = choose_checkpoint(sweep)
    assert chosen.info.meta.step == 10 and "latest, step 10" in chosen.note


def test_predict_answers_the_good_photos_reports_the_bad_one_and_exits_non_zero(
    checkpoints: Path, capsys, recwarn
) -> None:
    good = [str(checkpoints / f"{product.product_code}.png") for product in PRODUCTS[:2]]
    bad = str(checkpoints / "corrupt.jpg")
    argv = ["predict", "--checkpoint", str(checkpoints / "sweep"), good[0], bad, good[1]]
    code, out, err, _ = run_cli([*argv, "--json", "--max-new-tokens", "3"], capsys)
    assert code == 1
    records = json.loads(out)
    assert [record["image"] for record in records] == [good[0], bad, good[1]]
    assert [record["ok"] for record in records] == [True, False, True]
    assert all(isinstance(records[i]["answer"], str) for i in (0, 2))
    assert "not_an_image" in records[1]["problem"]
    assert_one_error_line(err, "corrupt.jpg", "cannot use this image")
    assert "using" in err and "trial_b/checkpoint_000005" in err  # which checkpoint of the sweep answered
    assert "2 of 3 photo(s) answered" in err
    # Library noise: transformers' own deprecation is silenced, any other warning text shows at most once.
    texts = [str(warning.message) for warning in recwarn]
    assert not [text for text in texts if "is_gradient_checkpointing" in text]
    assert len(texts) == len(set(texts)), texts


def test_predict_refuses_web_urls_and_missing_photos_before_touching_the_checkpoint(
    tmp_path: Path, capsys
) -> None:
    broken = tmp_path / "not-a-checkpoint"
    broken.mkdir()  # no meta.json: looking at it would fail, so the photos must be checked first
    argv = [
        "predict",
        "--checkpoint",
        str(broken),
        "https://example.com/coat.jpg",
        str(tmp_path / "gone.png"),
    ]
    code, _, err, seconds = run_cli(argv, capsys)
    assert code == 2 and seconds < 3
    assert_one_error_line(err, "URLs are not accepted", "gone.png: no such file")
    assert "missing_file" not in err


# ---------------------------------------------------------------------------------------------------------- train


def test_train_with_an_empty_validation_split_is_refused_before_training(
    catalog: Path, tmp_path: Path, capsys
) -> None:
    runs = tmp_path / "runs"
    argv = ["train", DEMO_YAML, "--set", f"data.catalog_dir={catalog}", "--set", f"run.storage_path={runs}"]
    code, _, err, seconds = run_cli(argv, capsys)
    assert code == 2 and seconds < 3
    assert_one_error_line(err, "splits.parquet", "val split is empty", "--ratios")
    assert not runs.exists()
    code, out, _, _ = run_cli([*argv, "--dry-run"], capsys)
    assert code == 0 and "val split is empty" in out  # the dry run says so too


# ------------------------------------------------------------------------------------------- meta.json base model


def _base_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_checkpoint_finds_its_base_after_runs_and_base_move_together(tmp_path: Path) -> None:
    base = _base_dir(tmp_path / "project" / "base")
    storage = tmp_path / "project" / "runs"
    relative = storage_relative_base(ModelSection(path=str(base)), str(storage))
    assert relative == "../base"
    checkpoint = storage / "sweep" / "trial_0" / "checkpoint_000001"
    checkpoint.mkdir(parents=True)
    meta = CheckpointMeta(
        mode="lora", base_model=ModelSection(path=str(base)), step=1, base_path_in_storage=relative
    )
    write_meta(checkpoint, meta)
    moved = tmp_path / "elsewhere"
    shutil.move(tmp_path / "project", moved)
    found = parse_meta(moved / "runs" / "sweep" / "trial_0" / "checkpoint_000001" / "meta.json")
    assert Path(found.base_model.path) == (moved / "base").resolve()


def test_checkpoint_whose_base_is_gone_names_the_meta_file_to_fix(tmp_path: Path) -> None:
    checkpoint = tmp_path / "runs" / "checkpoint_000001"
    checkpoint.mkdir(parents=True)
    gone = tmp_path / "deleted-base"
    write_meta(checkpoint, CheckpointMeta(mode="lora", base_model=ModelSection(path=str(gone)), step=1))
    with pytest.raises(CheckpointError) as caught:
        parse_meta(checkpoint / "meta.json")
    message = str(caught.value)
    assert (
        str(checkpoint / "meta.json") in message and "fix base_model.path" in message and str(gone) in message
    )


def test_base_given_as_hub_id_or_bucket_records_no_storage_path(tmp_path: Path) -> None:
    assert (
        storage_relative_base(ModelSection(path="microsoft/Phi-3-vision-128k-instruct"), str(tmp_path))
        is None
    )
    assert (
        storage_relative_base(ModelSection(path=str(_base_dir(tmp_path / "b"))), "s3://bucket/runs") is None
    )


# --------------------------------------------------------------------------------- every command, every bad path


def _bad_paths(tmp_path: Path) -> dict[str, str]:
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    a_file = tmp_path / "a-file.txt"
    a_file.write_text("not a directory")
    a_dir = tmp_path / "a-dir"
    a_dir.mkdir()
    return {"missing": str(tmp_path / "missing"), "empty": str(empty), "file": str(a_file), "dir": str(a_dir)}


# (command line with {missing}/{empty}/{file}/{dir} placeholders, words the error line must hold)
BAD_PATH_CASES = {
    "train missing": (["train", "{missing}"], ["{missing}", "no such experiment file"]),
    "train empty": (["train", "{empty}"], ["{empty}", "empty"]),
    "train file for dir": (["train", DEMO_YAML, "--set", "data.catalog_dir={file}"], ["{file}", "is a file"]),
    "train dir for file": (["train", "{dir}"], ["{dir}", "is a directory"]),
    "tune missing": (["tune", "{missing}"], ["{missing}", "no such experiment file"]),
    "tune empty": (["tune", "{empty}"], ["{empty}", "empty"]),
    "tune file for dir": (["tune", DEMO_YAML, "--set", "data.catalog_dir={file}"], ["{file}", "is a file"]),
    "tune dir for file": (["tune", "{dir}"], ["{dir}", "is a directory"]),
    "evaluate missing": (
        ["evaluate", "--checkpoints", "{missing}"],
        ["--checkpoints", "{missing}", "no such"],
    ),
    "evaluate empty": (["evaluate", "{empty}", "--checkpoints", "{dir}"], ["{empty}", "empty"]),
    "evaluate file for dir": (
        ["evaluate", "--checkpoints", "{file}"],
        ["--checkpoints", "{file}", "is a file"],
    ),
    "evaluate dir for file": (["evaluate", "{dir}", "--checkpoints", "{dir}"], ["{dir}", "is a directory"]),
    "predict missing": (
        ["predict", "--checkpoint", "{missing}", "{file}"],
        ["--checkpoint", "{missing}", "no such"],
    ),
    "predict empty": (["predict", "--checkpoint", "{dir}", "{empty}"], ["{empty}", "empty"]),
    "predict file for dir": (["predict", "--checkpoint", "{file}", "{file}"], ["--checkpoint", "is a file"]),
    "predict dir for file": (["predict", "--checkpoint", "{dir}", "{dir}"], ["{dir}", "is a directory"]),
    "demo missing": (["demo", "--out", "{file}/missing"], ["--out", "{file}", "not a directory"]),
    "demo file for dir": (["demo", "--out", "{file}"], ["--out", "{file}", "not a directory"]),
    "cluster missing": (["cluster", "check", "{missing}"], ["{missing}", "no such cluster file"]),
    "cluster empty": (["cluster", "check", "{empty}"], ["{empty}", "empty"]),
    "cluster dir for file": (["cluster", "check", "{dir}"], ["{dir}", "is a directory"]),
    "cluster experiment dir": (
        ["cluster", "check", DEMO_YAML, "--experiment", "{dir}"],
        ["{dir}", "is a directory"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_PATH_CASES))
def test_every_command_refuses_a_bad_path_in_one_line_within_3_seconds(
    case: str, tmp_path: Path, monkeypatch, capsys
) -> None:
    paths = _bad_paths(tmp_path)
    argv_template, words = BAD_PATH_CASES[case]
    argv = [part.format(**paths) for part in argv_template]
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    code, _, err, seconds = run_cli(argv, capsys)
    assert code == 2, err
    assert seconds < 3, f"{case}: {seconds:.1f}s"
    assert_one_error_line(err, *(word.format(**paths) for word in words))
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created, nothing removed
    assert Path(paths["file"]).read_text() == "not a directory"


def test_cluster_check_with_its_own_yaml_still_reads_experiments(tmp_path: Path, capsys) -> None:
    cluster_file = tmp_path / "cluster.yaml"
    cluster_file.write_text(yaml.safe_dump({"cluster_name": "x"}))
    code, _, err, _ = run_cli(
        ["cluster", "check", str(cluster_file), "--experiment", str(tmp_path / "gone.yaml")], capsys
    )
    assert code == 2
    assert_one_error_line(err, "gone.yaml", "no such experiment file")
