"""`data synth` in a directory that already holds things: only its own files go, a killed run resumes or is cleaned.

Real files on disk throughout; the interruption is a real exception raised from the progress callback in the middle
of drawing (what Ctrl-C does), so the directory is left exactly as a killed run leaves it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest

from phi3v_ray.cli import main
from phi3v_ray.data.synth import _image_paths, synth_catalog


def _tree(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def _images(root: Path) -> set[str]:
    return {f"images/{path.name}" for path in (root / "images").iterdir()}


def _catalog_images(root: Path) -> set[str]:
    return {path for path in pd.read_parquet(root / "catalog.parquet")["local_image_path"] if path}


def _interrupt(out: Path, rows: int, seed: int, after: int) -> None:
    """Run synth and stop it (KeyboardInterrupt, as Ctrl-C) after `after` images."""
    drawn = []

    def progress(count: int) -> None:
        drawn.append(count)
        if len(drawn) == after:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synth_catalog(out, rows, seed=seed, threads=1, progress=progress)


def test_overwrite_removes_only_what_synth_wrote_and_names_what_it_kept(tmp_path: Path, capsys) -> None:
    out = tmp_path / "sample"
    assert main(["data", "synth", "--rows", "6", "--seed", "1", "--out", str(out)]) == 0
    old_images = _catalog_images(out)
    (out / "notes.txt").write_text("mine")
    (out / "images" / "holiday.jpg").write_bytes(b"my photo")
    capsys.readouterr()

    assert main(["data", "synth", "--rows", "5", "--seed", "2", "--out", str(out)]) == 2
    assert "already holds a catalog" in capsys.readouterr().err
    assert main(["data", "synth", "--rows", "5", "--seed", "2", "--out", str(out), "--overwrite"]) == 0
    said = capsys.readouterr().out
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "images" / "holiday.jpg").read_bytes() == b"my photo"
    assert "kept 2 files data synth did not write: notes.txt, images/holiday.jpg" in said
    new_images = _catalog_images(out)
    assert len(pd.read_parquet(out / "catalog.parquet")) == 5
    assert _images(out) == new_images | {
        "images/holiday.jpg"
    }  # every old synth image gone, none of the user's
    assert not (old_images - new_images) & _images(out)


def test_overwrite_of_a_catalog_without_a_record_removes_only_the_images_its_catalog_lists(
    tmp_path: Path,
) -> None:
    out = synth_catalog(tmp_path / "old", 6, seed=1)
    (out / ".synth.json").unlink()  # as a catalog written before synth kept records
    (out / "images" / "holiday.jpg").write_bytes(b"my photo")
    synth_catalog(out, 4, seed=9, overwrite=True)
    assert _images(out) == _catalog_images(out) | {"images/holiday.jpg"}


def test_a_user_file_with_the_name_of_a_new_image_is_never_overwritten(tmp_path: Path, capsys) -> None:
    out = tmp_path / "sample"
    clash = _image_paths({"rows": 4, "seed": 0, "broken_url_share": 0.0})[0]
    (out / clash).parent.mkdir(parents=True)
    (out / clash).write_bytes(b"my photo")
    code = main(["data", "synth", "--rows", "4", "--broken-url-share", "0", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and clash in err and "no record of writing" in err and "Traceback" not in err
    assert _tree(out) == {clash: hashlib.sha256(b"my photo").hexdigest()}


def test_a_fetched_catalog_is_not_replaced_even_with_overwrite(tmp_path: Path, capsys) -> None:
    out = synth_catalog(tmp_path / "fetched", 4, seed=1)
    (out / "catalog.parquet").unlink()
    (out / ".synth.json").unlink()  # now it looks like `data fetch` output: manifest.parquet + images/
    before = _tree(out)
    assert main(["data", "synth", "--rows", "4", "--out", str(out), "--overwrite"]) == 2
    assert "data synth did not write it" in capsys.readouterr().err
    assert _tree(out) == before


def test_interrupted_run_resumes_with_same_settings_into_byte_identical_files(tmp_path: Path, capsys) -> None:
    out = tmp_path / "killed"
    _interrupt(out, rows=30, seed=5, after=4)
    assert not (out / "catalog.parquet").exists()
    left = _images(out)
    assert 0 < len(left) < 30
    (out / "images" / f"{Path(sorted(left)[0]).name}.part-deadbeef").write_bytes(
        b"half an im"
    )  # a torn write
    assert main(["data", "synth", "--rows", "30", "--seed", "5", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"resuming an interrupted run with the same settings: {len(left)} images already written" in said
    fresh = synth_catalog(tmp_path / "fresh", 30, seed=5)
    assert _tree(out) == _tree(fresh)


def test_interrupted_run_with_other_settings_is_cleaned_up_and_said_so(tmp_path: Path, capsys) -> None:
    out = tmp_path / "killed"
    _interrupt(out, rows=30, seed=5, after=4)
    left = _images(out)
    assert main(["data", "synth", "--rows", "8", "--seed", "6", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert f"removed {len(left) + 1} files an interrupted run with other settings" in said  # + its record
    assert "seed 5" in said
    assert _images(out) == _catalog_images(out)  # nothing of the killed run is left behind
    assert _tree(out) == _tree(synth_catalog(tmp_path / "fresh", 8, seed=6))
