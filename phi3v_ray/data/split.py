"""Stable product-level splits: train / val / test from a sha256 of a group key, never Python's hash().

The split of a row depends only on its group key, so the same catalog splits identically on every machine and run,
a group (by default: a title, which all colourways of one product share) never straddles two splits, and rows
appended later never move the rows already there.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from phi3v_ray.data.catalog import (
    SPLITS_FILE,
    CatalogDir,
    read_manifest,
    read_table,
    resolve_image_paths,
    usable_rows,
    write_table,
)
from phi3v_ray.data.schema import STATUS_OK, status_kind
from phi3v_ray.errors import DataError
from phi3v_ray.storage import location

SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")
GROUP_KEYS: tuple[str, ...] = ("title", "product_code")


def parse_ratios(text: str) -> tuple[float, float, float]:
    """`"0.8,0.1,0.1"` -> (0.8, 0.1, 0.1); three non-negative numbers summing to 1."""
    parts = [part.strip() for part in text.split(",")]
    try:
        ratios = tuple(float(part) for part in parts)
    except ValueError as error:
        raise DataError(f"--ratios {text!r}: expected three numbers like 0.8,0.1,0.1") from error
    return check_ratios(ratios, text)


def check_ratios(ratios: Sequence[float], shown: str | None = None) -> tuple[float, float, float]:
    """The ratios as a triple, or a DataError saying what was wrong with them."""
    shown = shown or ",".join(str(r) for r in ratios)
    if len(ratios) != 3 or any(not math.isfinite(r) or r < 0 for r in ratios):
        raise DataError(f"--ratios {shown!r}: expected three non-negative numbers (train,val,test)")
    if abs(sum(ratios) - 1.0) > 1e-6:
        raise DataError(f"--ratios {shown!r}: sum to {sum(ratios):g}, expected 1")
    return (float(ratios[0]), float(ratios[1]), float(ratios[2]))


def group_fraction(key: str) -> float:
    """A uniform number in [0, 1) fixed by the key's bytes alone (first 8 bytes of its sha256)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_of(key: str, ratios: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    """The split ("train", "val" or "test") of one group key."""
    fraction = group_fraction(key)
    if fraction < ratios[0]:
        return "train"
    return "val" if fraction < ratios[0] + ratios[1] else "test"


def _group_key(value: object) -> str:
    """Keys are compared as text with surrounding whitespace ignored, so CSV and parquet inputs agree."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def assign_splits(
    rows: pd.DataFrame, by: str = "title", ratios: Sequence[float] = (0.8, 0.1, 0.1)
) -> pd.DataFrame:
    """The rows with a `split` column; every row of one group gets the same split."""
    if by not in GROUP_KEYS:
        raise DataError(f"--by {by!r}: expected one of {', '.join(GROUP_KEYS)}")
    ratios = check_ratios(ratios)
    out = rows.copy()
    out["split"] = pd.array([split_of(_group_key(v), ratios) for v in out[by].tolist()], dtype="string")
    return out


def split_catalog(
    catalog_dir: CatalogDir, by: str = "title", ratios: Sequence[float] = (0.8, 0.1, 0.1)
) -> pd.DataFrame:
    """Write `<dir>/splits.parquet` (a folder or a bucket prefix): the manifest's ok rows plus `split`.

    The file appears whole or not at all (storage writes), so a reader never sees half a splits table.
    """
    return split_catalog_counted(catalog_dir, by, ratios)[0]


def split_catalog_counted(
    catalog_dir: CatalogDir, by: str = "title", ratios: Sequence[float] = (0.8, 0.1, 0.1)
) -> tuple[pd.DataFrame, dict[str, int]]:
    """`split_catalog`, plus the manifest rows it left out, counted by status kind (nothing leaves unreported)."""
    manifest = read_manifest(catalog_dir)
    rows = assign_splits(usable_rows(manifest), by=by, ratios=ratios)
    write_table(rows, location(catalog_dir).join(SPLITS_FILE))
    left_out = manifest.loc[manifest["status"] != STATUS_OK, "status"].astype(str).map(status_kind)
    return rows, {str(kind): int(count) for kind, count in left_out.value_counts().items()}


def load_split(catalog_dir: CatalogDir, split: str) -> pd.DataFrame:
    """One split's rows from `<dir>/splits.parquet`, with `image_path` (absolute path or URI) added."""
    if split not in SPLIT_NAMES:
        raise DataError(f"split {split!r}: expected one of {', '.join(SPLIT_NAMES)}")
    path = location(catalog_dir).join(SPLITS_FILE)
    if not path.is_file():
        raise DataError(f"{path}: not found; run `phi3v-ray data split {catalog_dir}` first")
    rows = read_table(path, f"the splits `phi3v-ray data split {catalog_dir}` writes")
    if "split" not in rows.columns:
        raise DataError(f"{path}: no `split` column; expected the output of `phi3v-ray data split`")
    if "local_image_path" not in rows.columns:
        raise DataError(
            f"{path}: split rows have no local_image_path column; run `phi3v-ray data fetch` first"
        )
    chosen = rows[rows["split"] == split].reset_index(drop=True)
    chosen["image_path"] = resolve_image_paths(catalog_dir, chosen["local_image_path"])
    return chosen


def load_split_rows(catalog_dir: CatalogDir, split: str, max_examples: int | None = None) -> pd.DataFrame:
    """The rows preparation reads: `local_image_path` made absolute (or a URI) and a `row_id` (position in split).

    Preprocessing actors may run anywhere in the cluster, so they get absolute paths or object URIs, never
    dir-relative ones.
    """
    rows = load_split(catalog_dir, split)
    rows["local_image_path"] = rows["image_path"]
    return with_row_ids(rows, max_examples)


def with_row_ids(rows: pd.DataFrame, max_examples: int | None = None) -> pd.DataFrame:
    """Keep the first `max_examples` rows (stable) and number them 0..n-1, the key of the rejects bookkeeping."""
    out = rows.iloc[:max_examples] if max_examples is not None else rows
    out = out.reset_index(drop=True).copy()
    out["row_id"] = np.arange(len(out), dtype=np.int64)
    return out


def split_report(rows: pd.DataFrame, category_column: str = "category3_code") -> list[str]:
    """Per-split row and group counts and the category distribution, as printable lines."""
    lines = [f"{'split':<6} {'rows':>6}  categories"]
    for name in SPLIT_NAMES:
        part = rows[rows["split"] == name]
        counts = part[category_column].value_counts()
        top = ", ".join(f"{category} {count}" for category, count in counts.items())
        lines.append(f"{name:<6} {len(part):>6}  {top or '-'}")
    return lines
