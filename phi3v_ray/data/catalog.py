"""Reading a catalog directory: the manifest every stage starts from, and image paths resolved against the dir.

A catalog directory is the same whether `data synth` or `data fetch` wrote it, so split and prepare read it here
and never care which.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from phi3v_ray.data.schema import BURBERRY_COLUMNS, MANIFEST_EXTRA_COLUMNS, STATUS_OK, is_missing
from phi3v_ray.errors import DataError

MANIFEST_FILE = "manifest.parquet"
SPLITS_FILE = "splits.parquet"
IMAGES_DIR = "images"


def read_manifest(catalog_dir: str | os.PathLike) -> pd.DataFrame:
    """Every row of `<dir>/manifest.parquet` (status and local path included); a DataError names what is missing."""
    path = Path(catalog_dir) / MANIFEST_FILE
    if not path.is_file():
        raise DataError(
            f"{path}: not found; expected a catalog dir made by `phi3v-ray data synth` or `phi3v-ray data fetch`"
        )
    manifest = pd.read_parquet(path)
    missing = [c for c in (*BURBERRY_COLUMNS, *MANIFEST_EXTRA_COLUMNS) if c not in manifest.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; expected the 17 catalog columns + status"
        )
    return manifest


def usable_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """The rows whose image is on disk and whose labels are valid (status ok)."""
    return manifest[manifest["status"] == STATUS_OK].copy()


def resolve_image_paths(catalog_dir: str | os.PathLike, relative_paths: pd.Series) -> pd.Series:
    """Absolute image paths from the dir-relative `local_image_path` column (dirs can move; paths stay valid).

    Absolute paths are kept as they are. A missing or blank path stays None, so the row is rejected as "no image
    path" instead of pointing at the catalog directory itself.
    """
    root = Path(catalog_dir).resolve()

    def resolve(value: object) -> str | None:
        if is_missing(value) or str(value).strip() == "":
            return None
        return str(root / str(value))  # joining an absolute path gives that path

    return pd.Series([resolve(v) for v in relative_paths], index=relative_paths.index, dtype=object)
