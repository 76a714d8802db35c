"""Bad inputs to the data commands: one `error:` line naming the culprit, fast, before Ray, no traceback, no loss.

The table runs every data command (synth, fetch, split, prepare) with a missing path, an empty file, a file where a
directory is expected and a directory where a file is expected, in process through `phi3v_ray.cli.main`. Imports are
warmed once first: the 3 s limit is about the work done before the error, not Python's import time on a loaded
machine. Ray's `connect` is replaced by a function that fails the test, the one stand-in here: it proves no case
reaches Ray (which takes 8 s to start).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from phi3v_ray.cli import main
from phi3v_ray.data.synth import synth_catalog


@dataclass(frozen=True)
class Place:
    """The paths one table row may use, all under a fresh tmp dir."""

    root: Path
    catalog: Path  # a small synth catalog (manifest, images) with splits.parquet
    notes: Path  # a user's file with content
    empty: Path  # a 0-byte file
    folder: Path  # an empty directory


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-row catalog (a few broken URLs) with splits; copied into each case's dir so cases cannot interfere."""
    directory = synth_catalog(
        tmp_path_factory.mktemp("data-inputs") / "sample", 12, seed=4, broken_url_share=0.3
    )
    assert main(["data", "split", str(directory)]) == 0
    return directory


@pytest.fixture
def place(tmp_path: Path, sample: Path) -> Place:
    import shutil

    catalog = tmp_path / "catalog"
    shutil.copytree(sample, catalog)
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    empty = tmp_path / "empty.parquet"
    empty.write_bytes(b"")
    folder = tmp_path / "folder"
    folder.mkdir()
    return Place(tmp_path, catalog, notes, empty, folder)


@pytest.fixture(autouse=True)
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a command tries to start or join Ray: every input check must come first."""
    import phi3v_ray.ray_session

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the command started Ray before checking its inputs")

    monkeypatch.setattr(phi3v_ray.ray_session, "connect", refuse)


@pytest.fixture(scope="module", autouse=True)
def warm_imports() -> None:
    import tqdm  # noqa: F401

    import phi3v_ray.commands.arguments  # noqa: F401
    import phi3v_ray.config  # noqa: F401
    import phi3v_ray.data.fetch  # noqa: F401
    import phi3v_ray.data.split  # noqa: F401


def _zero_bytes_manifest(p: Place) -> list[str]:
    (p.catalog / "manifest.parquet").write_bytes(b"")
    return ["data", "split", str(p.catalog)]


def _folder_manifest(p: Place) -> list[str]:
    (p.catalog / "manifest.parquet").unlink()
    (p.catalog / "manifest.parquet").mkdir()
    return ["data", "split", str(p.catalog)]


def _garbage_manifest(p: Place) -> list[str]:
    (p.catalog / "manifest.parquet").write_text("product_code,title\n1,a\n")
    return ["data", "split", str(p.catalog)]


def _zero_bytes_splits(p: Place) -> list[str]:
    (p.catalog / "splits.parquet").write_bytes(b"")
    return ["data", "prepare", "--catalog", str(p.catalog)]


def _folder_splits(p: Place) -> list[str]:
    (p.catalog / "splits.parquet").unlink()
    (p.catalog / "splits.parquet").mkdir()
    return ["data", "prepare", "--catalog", str(p.catalog)]


def _no_splits(p: Place) -> list[str]:
    (p.catalog / "splits.parquet").unlink()
    return ["data", "prepare", "--catalog", str(p.catalog)]


def _fetch_into_unreadable_manifest(p: Place) -> list[str]:
    (p.folder / "manifest.parquet").write_bytes(b"")
    return ["data", "fetch", "--source", str(p.catalog / "catalog.parquet"), "--out", str(p.folder)]


def _fetch_without_columns(p: Place) -> list[str]:
    pd.DataFrame({"title": ["a"]}).to_parquet(p.root / "titles.parquet")
    return ["data", "fetch", "--source", str(p.root / "titles.parquet"), "--out", str(p.root / "out")]


def _fetch_header_only_csv(p: Place) -> list[str]:
    header = ",".join(pd.read_parquet(p.catalog / "catalog.parquet").columns)
    (p.root / "header.csv").write_text(header + "\n")
    return ["data", "fetch", "--source", str(p.root / "header.csv"), "--out", str(p.root / "out")]


# (case id, argv from the places, words the one error line must hold)
CASES: list[tuple[str, Callable[[Place], list[str]], tuple[str, ...]]] = [
    # data synth: its only path is --out, a directory
    ("synth-out-is-a-file", lambda p: ["data", "synth", "--rows", "3", "--out", str(p.notes)],
     ("--out", "notes.txt", "is a file")),
    ("synth-out-is-an-empty-file", lambda p: ["data", "synth", "--rows", "3", "--out", str(p.empty)],
     ("--out", "empty.parquet", "is a file")),
    ("synth-out-below-a-file", lambda p: ["data", "synth", "--rows", "3", "--out", str(p.notes / "sub")],
     ("--out", "notes.txt is a file")),
    # data fetch: --source a file, --out a directory
    ("fetch-source-missing", lambda p: ["data", "fetch", "--source", str(p.root / "nope.parquet"), "--out",
                                        str(p.root / "out")], ("nope.parquet", "no such file")),
    ("fetch-source-empty", lambda p: ["data", "fetch", "--source", str(p.empty), "--out", str(p.root / "out")],
     ("--source", "empty.parquet", "0 bytes")),
    ("fetch-source-is-a-folder", lambda p: ["data", "fetch", "--source", str(p.folder), "--out",
                                            str(p.root / "out")], ("--source", "folder", "is a directory")),
    ("fetch-out-is-a-file", lambda p: ["data", "fetch", "--source", str(p.catalog / "catalog.parquet"), "--out",
                                       str(p.notes)], ("--out", "notes.txt", "is a file")),
    ("fetch-out-holds-an-empty-manifest", _fetch_into_unreadable_manifest,
     ("manifest.parquet", "not a readable manifest")),
    ("fetch-source-without-catalog-columns", _fetch_without_columns, ("titles.parquet", "missing column(s)")),
    ("fetch-source-without-rows", _fetch_header_only_csv, ("--source", "header.csv", "no rows")),
    # data split: DIR a directory holding manifest.parquet
    ("split-dir-missing", lambda p: ["data", "split", str(p.root / "nope")], ("nope", "not found")),
    ("split-manifest-empty", _zero_bytes_manifest, ("manifest.parquet", "is empty (0 bytes)")),
    ("split-manifest-not-parquet", _garbage_manifest, ("manifest.parquet", "not a readable parquet file")),
    ("split-dir-is-a-file", lambda p: ["data", "split", str(p.notes)], ("notes.txt", "is a file")),
    ("split-manifest-is-a-folder", _folder_manifest, ("manifest.parquet", "is a directory")),
    # data prepare: an experiment file, or --catalog DIR holding splits.parquet
    ("prepare-experiment-missing", lambda p: ["data", "prepare", str(p.root / "nope.yaml")], ("nope.yaml",)),
    ("prepare-experiment-empty", lambda p: ["data", "prepare", str(p.empty)], ("empty.parquet",)),
    ("prepare-experiment-is-a-folder", lambda p: ["data", "prepare", str(p.folder)], ("folder",)),
    ("prepare-catalog-missing", lambda p: ["data", "prepare", "--catalog", str(p.root / "nope")],
     ("--catalog", "nope", "no such directory")),
    ("prepare-catalog-is-a-file", lambda p: ["data", "prepare", "--catalog", str(p.notes)],
     ("--catalog", "notes.txt", "is a file")),
    ("prepare-splits-missing", _no_splits, ("splits.parquet", "not found", "phi3v-ray data split")),
    ("prepare-splits-empty", _zero_bytes_splits, ("splits.parquet", "is empty (0 bytes)")),
    ("prepare-splits-is-a-folder", _folder_splits, ("splits.parquet", "is a directory")),
]  # fmt: skip


def _tree(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse refusals
        return int(exit_.code)


@pytest.mark.parametrize(("argv_for", "words"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_bad_path_fails_fast_with_one_error_line_naming_it_and_touches_nothing(
    place: Place, argv_for: Callable[[Place], list[str]], words: tuple[str, ...], capsys
) -> None:
    argv = argv_for(place)
    before = _tree(place.root)
    started = time.perf_counter()
    code = _run(argv)
    took = time.perf_counter() - started
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert code != 0, err
    assert "Traceback" not in err
    assert len(error_lines) == 1, err
    for word in words:
        assert word in error_lines[0], (word, error_lines[0])
    assert took < 3.0, f"{argv}: {took:.1f}s"
    assert _tree(place.root) == before  # nothing of the user's was written, changed or deleted


NUMERIC_FLAGS = [
    ("fetch", "--retries", "-1"),
    ("fetch", "--threads", "0"),
    ("fetch", "--rows-per-task", "0"),
    ("fetch", "--connect-timeout", "0"),
    ("fetch", "--read-timeout", "-5"),
    ("fetch", "--max-mb", "nan"),
    ("synth", "--rows", "0"),
    ("synth", "--rows", "2.5"),
    ("synth", "--threads", "0"),
    ("synth", "--seed", "-1"),
    ("synth", "--broken-url-share", "1"),
    ("synth", "--broken-url-share", "-0.1"),
]


@pytest.mark.parametrize(("command", "flag", "value"), NUMERIC_FLAGS)
def test_nonsense_numbers_are_refused_while_parsing_naming_the_flag(
    tmp_path: Path, command: str, flag: str, value: str, capsys
) -> None:
    base = {
        "fetch": ["data", "fetch", "--source", str(tmp_path / "c.parquet"), "--out", str(tmp_path / "o")],
        "synth": ["data", "synth", "--out", str(tmp_path / "o")],
    }[command]
    assert _run([*base, f"{flag}={value}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"argument {flag}: expected" in err and repr(value) in err
    assert not (tmp_path / "o").exists()


def test_sensible_numbers_still_parse_to_numbers() -> None:
    from phi3v_ray.cli import build_parser

    args = build_parser().parse_args(
        ["data", "fetch", "--source", "c.parquet", "--out", "o", "--retries", "0", "--read-timeout", "2.5"]
    )
    assert (args.retries, args.read_timeout, args.threads, args.max_mb) == (0, 2.5, 16, 25.0)


def test_split_reports_the_manifest_rows_it_left_out_and_counts_reconcile(place: Place, capsys) -> None:
    manifest = pd.read_parquet(place.catalog / "manifest.parquet")
    not_ok = int((manifest["status"] != "ok").sum())
    assert 0 < not_ok < len(manifest)  # the sample has broken URLs
    assert main(["data", "split", str(place.catalog)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    written = len(pd.read_parquet(place.catalog / "splits.parquet"))
    assert f"wrote {written} rows" in first
    assert f"left out {not_ok} whose image status is not ok" in first
    assert written + not_ok == len(manifest)
