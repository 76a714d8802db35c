"""Reading a catalog directory: the manifest every stage starts from, and image paths resolved against the dir.

A catalog directory is the same whether `data synth` or `data fetch` wrote it, so split and prepare read it here
and never care which. It may be a local folder or an object-store prefix (s3://bucket/catalog): everything goes
through phi3v_ray.storage, so a cluster whose nodes share no disk reads the same catalog from the bucket.
"""

from __future__ import annotations

import io
import os
from pathlib import PurePosixPath

import pandas as pd
import pyarrow as pa

from phi3v_ray.data.schema import BURBERRY_COLUMNS, MANIFEST_EXTRA_COLUMNS, STATUS_OK, is_missing
from phi3v_ray.errors import DataError
from phi3v_ray.storage import Location, explain, is_uri, location, require_bucket

MANIFEST_FILE = "manifest.parquet"
SPLITS_FILE = "splits.parquet"
IMAGES_DIR = "images"

CatalogDir = str | os.PathLike[str] | Location


def read_table(where: Location, expected: str = "a parquet table") -> pd.DataFrame:
    """A parquet file (local or an object) as a DataFrame; a 0-byte or non-parquet file is a one-line DataError."""
    try:
        return pd.read_parquet(where.path, filesystem=where.filesystem)
    except (pa.ArrowInvalid, ValueError) as error:  # 0 bytes, not parquet, a truncated footer
        if where.info().size == 0:
            raise DataError(f"{where}: is empty (0 bytes); expected {expected}") from None
        detail = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        raise DataError(f"{where}: not a readable parquet file ({detail}); expected {expected}") from None
    except OSError as error:
        if where.is_remote:
            raise explain(error, where.uri) from None
        raise DataError(f"{where}: cannot be read ({error}); expected {expected}") from None


def write_table(frame: pd.DataFrame, where: Location) -> None:
    """Write a DataFrame as one parquet file that readers see whole or not at all (see Location.write_bytes)."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    where.write_bytes(buffer.getvalue())


def read_manifest(catalog_dir: CatalogDir) -> pd.DataFrame:
    """Every row of `<dir>/manifest.parquet` (status and image path included); a DataError names what is missing."""
    path = location(catalog_dir).join(MANIFEST_FILE)
    if not path.is_file():
        if path.is_dir():
            raise DataError(
                f"{path}: is a directory; expected the parquet file `data synth` or `data fetch` writes"
            )
        require_bucket(path)
        raise DataError(
            f"{path}: not found; expected a catalog dir made by `phi3v-ray data synth` or `phi3v-ray data fetch`"
            + _what_is_there(path.parent)
        )
    manifest = read_table(path, "the manifest `phi3v-ray data synth` or `phi3v-ray data fetch` writes")
    missing = [c for c in (*BURBERRY_COLUMNS, *MANIFEST_EXTRA_COLUMNS) if c not in manifest.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {', '.join(missing)}; expected the 17 catalog columns + status"
        )
    return manifest


def _what_is_there(directory: Location) -> str:
    """A hint for a location that is not a catalog: a file given instead of its folder, or a prefix of other data."""
    if directory.is_file():
        return f" ({directory} is a file; give the folder or prefix that holds {MANIFEST_FILE})"
    if directory.is_remote:
        names = sorted({PurePosixPath(info.path).name for info in directory.list()})
        if names:
            return f" ({directory} holds {', '.join(names[:5])}{', ...' if len(names) > 5 else ''}, not a catalog)"
    return ""


def usable_rows(manifest: pd.DataFrame) -> pd.DataFrame:
    """The rows whose image is on disk and whose labels are valid (status ok)."""
    return manifest[manifest["status"] == STATUS_OK].copy()


def resolve_image_paths(catalog_dir: CatalogDir, relative_paths: pd.Series) -> pd.Series:
    """Absolute image locations from the dir-relative `local_image_path` column (dirs can move; paths stay valid).

    A catalog in a bucket gives object URIs (s3://bucket/catalog/images/x.jpg) that any node can open through
    phi3v_ray.storage. Absolute paths and URIs are kept as they are. A missing or blank path stays None, so the row
    is rejected as "no image path" instead of pointing at the catalog directory itself.
    """
    root = location(catalog_dir)

    def resolve(value: object) -> str | None:
        if is_missing(value) or str(value).strip() == "":
            return None
        text = str(value)
        if is_uri(text) or PurePosixPath(text).is_absolute():
            return text
        return root.join(text).uri

    return pd.Series([resolve(v) for v in relative_paths], index=relative_paths.index, dtype=object)
