"""Stable splits: a fixed hash, groups never straddle splits, appended rows never move existing ones."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from phi3v_ray.data.split import (
    assign_splits,
    group_fraction,
    load_split,
    parse_ratios,
    split_catalog,
)
from phi3v_ray.data.synth import synth_catalog
from phi3v_ray.errors import DataError


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_catalog(tmp_path_factory.mktemp("split") / "sample", 150, seed=11, broken_url_share=0.05)


def test_group_hash_is_pinned_so_every_machine_splits_alike() -> None:
    # sha256-based, not Python's per-process hash(): this value must never change.
    assert group_fraction("Classic Check Cashmere Scarf in Honey") == pytest.approx(
        0.3632696068207293, abs=1e-15
    )


def test_no_title_is_in_two_splits_and_ratios_hold_on_many_groups() -> None:
    titles = [f"Product {i // 3}" for i in range(9000)]  # three colourways per title
    rows = assign_splits(pd.DataFrame({"title": titles, "product_code": range(9000)}))
    assert (rows.groupby("title")["split"].nunique() == 1).all()
    shares = rows["split"].value_counts(normalize=True)
    assert (
        abs(shares["train"] - 0.8) < 0.03
        and abs(shares["val"] - 0.1) < 0.02
        and abs(shares["test"] - 0.1) < 0.02
    )


def test_appending_rows_never_moves_existing_rows() -> None:
    base = pd.DataFrame({"title": [f"T{i}" for i in range(300)], "product_code": range(300)})
    before = assign_splits(base)
    extra = pd.DataFrame(
        {"title": ["T5", "T77", *[f"New {i}" for i in range(100)]], "product_code": range(300, 402)}
    )
    after = assign_splits(pd.concat([extra.iloc[:50], base, extra.iloc[50:]], ignore_index=True))
    merged = after.merge(before, on="product_code", suffixes=("_after", "_before"))
    assert len(merged) == 300 and (merged["split_after"] == merged["split_before"]).all()
    split_by_title = dict(zip(before["title"], before["split"], strict=True))
    new_colourways = after[after["product_code"].isin([300, 301])]
    assert new_colourways["split"].tolist() == [split_by_title["T5"], split_by_title["T77"]]


def test_split_by_product_code_separates_colourways_by_code() -> None:
    rows = assign_splits(
        pd.DataFrame({"title": ["Same"] * 400, "product_code": range(400)}), by="product_code"
    )
    assert rows["split"].nunique() == 3


def test_split_dir_keeps_only_ok_rows_and_is_identical_on_rerun(catalog_dir: Path) -> None:
    first = split_catalog(catalog_dir)
    manifest = pd.read_parquet(catalog_dir / "manifest.parquet")
    assert len(first) == (manifest["status"] == "ok").sum() < len(manifest)
    second = split_catalog(catalog_dir)
    assert first["split"].tolist() == second["split"].tolist()
    parts = [load_split(catalog_dir, name) for name in ("train", "val", "test")]
    assert sum(len(part) for part in parts) == len(first)
    assert set(parts[0]["title"]).isdisjoint(set(parts[1]["title"]) | set(parts[2]["title"]))
    assert all(Path(path).is_file() for part in parts for path in part["image_path"])


def test_bad_ratios_and_missing_splits_file_are_clear_errors(tmp_path: Path) -> None:
    assert parse_ratios("0.7, 0.2, 0.1") == (0.7, 0.2, 0.1)
    with pytest.raises(DataError, match="sum to 1.1, expected 1"):
        parse_ratios("0.8,0.2,0.1")
    with pytest.raises(DataError, match="expected three numbers"):
        parse_ratios("0.8,x,0.1")
    with pytest.raises(DataError, match="run `phi3v-ray data split"):
        load_split(tmp_path, "train")
    with pytest.raises(DataError, match="manifest.parquet: not found"):
        split_catalog(tmp_path)
