"""What a `data synth` output directory holds, and which of its files synth may remove, resume or must leave alone.

`--overwrite` once deleted every file under `images/`, a user's own included, and a killed run left images with no
catalog that the rerun then called "a catalog". So synth keeps a record (`.synth.json`: its settings and whether it
finished) written before the first image. From the record (or, for a catalog made before records existed, from the
catalog's own `local_image_path` column) synth knows exactly which files it wrote: only those are ever removed, an
unfinished run with the same settings is resumed, one with other settings is cleaned up, and anything else in the
directory is kept and named.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq

from phi3v_ray.data.inputs import check_directory_target
from phi3v_ray.errors import DataError

CATALOG_FILE = "catalog.parquet"
MANIFEST_FILE = "manifest.parquet"
IMAGES_DIR = "images"
RECORD_FILE = ".synth.json"
PART_MARKER = ".part-"
OWN_TOP_LEVEL = (CATALOG_FILE, MANIFEST_FILE, RECORD_FILE)

SpecPaths = Callable[[dict[str, float | int]], list[str]]


@dataclass
class OutDirPlan:
    """What to do in the output directory before drawing: which images already exist, and what to tell the user."""

    resume_existing: set[str] = field(default_factory=set)  # image paths a resumed run keeps
    notes: list[str] = field(default_factory=list)


def read_record(out: Path) -> dict | None:
    """The record of the last synth run in `out`, or None when there is none (or it is unreadable)."""
    try:
        record = json.loads((out / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("settings"), dict) else None


def write_record(out: Path, settings: dict[str, float | int], *, finished: bool) -> None:
    """Record the run's settings (before any image) and, at the end, that it finished."""
    (out / RECORD_FILE).write_text(json.dumps({"settings": settings, "finished": finished}, sort_keys=True))


def check_out_dir(out: Path) -> None:
    """A DataError when `out` (or a folder above it) is a file: synth writes a directory."""
    check_directory_target(out, "--out", "a directory to write the catalog into")


def plan_out_dir(
    out: Path, settings: dict[str, float | int], spec_paths: SpecPaths, *, overwrite: bool
) -> OutDirPlan:
    """Resume, clean up or replace what an earlier synth run left in `out`; refuse when that would lose user files.

    `spec_paths(settings)` lists the image paths a run with those settings writes (the table is cheap to rebuild).
    """
    check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    record = read_record(out)
    plan = OutDirPlan()
    new_paths = spec_paths(settings)
    if record is not None:
        # A killed run's half-written images: only synth writes into a directory it keeps a record in.
        remove_partials(out)
    if record is not None and not record.get("finished"):
        if record["settings"] == settings:
            plan.resume_existing = {path for path in new_paths if (out / path).is_file()}
            plan.notes.append(
                f"resuming an interrupted run with the same settings: {len(plan.resume_existing)} images already "
                f"written, drawing the rest (of {len(new_paths)})"
            )
        else:
            removed = _remove_own(out, spec_paths(record["settings"]))
            plan.notes.append(
                f"removed {removed} files an interrupted run with other settings ({_describe(record['settings'])}) "
                "left; starting afresh"
            )
    elif record is not None or (out / CATALOG_FILE).exists() or (out / MANIFEST_FILE).exists():
        own_images = _finished_run_images(out, record, spec_paths)
        if not overwrite:
            raise DataError(
                f"{out}: already holds a catalog; expected an empty directory (or pass --overwrite)"
            )
        removed = _remove_own(out, own_images)
        plan.notes.append(f"--overwrite: removed the previous catalog ({removed} files data synth wrote)")
    _refuse_collisions(out, new_paths, plan.resume_existing)
    kept = foreign_entries(out, plan.resume_existing)
    if kept:
        plan.notes.append(
            f"kept {len(kept)} file{'s' if len(kept) != 1 else ''} data synth did not write: {_first(kept)}"
        )
        if "splits.parquet" in kept and plan.notes[0].startswith("--overwrite"):
            plan.notes.append(
                f"splits.parquet belongs to the previous catalog: run `phi3v-ray data split {out}` again"
            )
    return plan


def _finished_run_images(out: Path, record: dict | None, spec_paths: SpecPaths) -> list[str]:
    """The images a finished run wrote: from its record, else from its catalog; refuse a catalog synth did not make."""
    if record is not None:
        return spec_paths(record["settings"])
    catalog = out / CATALOG_FILE
    if not catalog.is_file():
        raise DataError(
            f"{out}: holds {MANIFEST_FILE} but no {CATALOG_FILE} (a `data fetch` catalog?); data synth did not write "
            "it and will not replace it: choose another --out"
        )
    try:
        paths = pq.read_table(catalog, columns=["local_image_path"]).column(0).to_pylist()
    except Exception as error:  # noqa: BLE001 - any unreadable catalog gets the same clear refusal
        raise DataError(
            f"{catalog}: cannot be read ({type(error).__name__}); data synth cannot tell which images it wrote, "
            "so it replaces nothing: delete the directory yourself or choose another --out"
        ) from None
    return [path for path in paths if path]


def _remove_own(out: Path, image_paths: list[str]) -> int:
    """Delete synth's top-level files, the listed images and their partial writes; returns how many files went."""
    removed = 0
    wanted = {Path(path).name for path in image_paths}
    images = out / IMAGES_DIR
    if images.is_dir():
        for file in images.iterdir():
            base = file.name.split(PART_MARKER, 1)[0]
            if file.is_file() and base in wanted:
                file.unlink()
                removed += 1
    for name in OWN_TOP_LEVEL:
        if (out / name).is_file():
            (out / name).unlink()
            removed += 1
    return removed


def remove_partials(out: Path) -> None:
    """Delete `.part-` files a killed run left in images/ (only synth writes files with that marker there)."""
    images = out / IMAGES_DIR
    if images.is_dir():
        for file in images.iterdir():
            if PART_MARKER in file.name and file.is_file():
                file.unlink()


def _refuse_collisions(out: Path, new_paths: list[str], resumed: set[str]) -> None:
    """Refuse to write over a file synth has no record of writing (a user's photo that happens to share a name)."""
    clashes = [path for path in new_paths if path not in resumed and (out / path).exists()]
    if clashes:
        raise DataError(
            f"{out}: {_first(clashes)} already exist and data synth has no record of writing them; move them away "
            "or choose another --out (nothing was deleted)"
        )


def foreign_entries(out: Path, own_images: set[str]) -> list[str]:
    """Entries in `out` synth did not write, once its earlier files were removed: all but its own names and images."""
    entries = [path.name for path in sorted(out.iterdir()) if path.name not in (*OWN_TOP_LEVEL, IMAGES_DIR)]
    images = out / IMAGES_DIR
    if images.is_dir():
        listed = (f"{IMAGES_DIR}/{path.name}" for path in sorted(images.iterdir()))
        entries += [path for path in listed if path not in own_images]
    return entries


def _describe(settings: dict[str, float | int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(settings.items()))


def _first(names: list[str], count: int = 5) -> str:
    return ", ".join(names[:count]) + (f", ... ({len(names)} in all)" if len(names) > count else "")
