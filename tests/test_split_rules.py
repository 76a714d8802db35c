"""Where each group lands: the ratio boundaries, val versus test, and keys that must compare equal."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from phi3v_ray.data.split import (
    SPLIT_NAMES,
    assign_splits,
    check_ratios,
    group_fraction,
    parse_ratios,
    split_of,
    split_report,
)
from phi3v_ray.errors import DataError

KEYS = [f"Product {i}" for i in range(200)]


def test_group_fraction_is_the_first_eight_sha256_bytes_as_a_fraction_of_two_to_the_64() -> None:
    for key in ("Lola Bag", "Check Trench Coat", ""):
        digest = hashlib.sha256(key.encode()).digest()
        assert group_fraction(key) == int.from_bytes(digest[:8], "big") / 2**64
        assert 0.0 <= group_fraction(key) < 1.0


def test_a_validation_only_ratio_puts_every_group_in_val_and_a_test_only_ratio_in_test() -> None:
    assert {split_of(key, (0.0, 1.0, 0.0)) for key in KEYS} == {"val"}
    assert {split_of(key, (0.0, 0.0, 1.0)) for key in KEYS} == {"test"}
    assert {split_of(key, (1.0, 0.0, 0.0)) for key in KEYS} == {"train"}


def test_splits_are_consecutive_intervals_train_then_val_then_test() -> None:
    ratios = (0.5, 0.25, 0.25)
    for key in KEYS:
        fraction = group_fraction(key)
        expected = "train" if fraction < 0.5 else "val" if fraction < 0.75 else "test"
        assert split_of(key, ratios) == expected


def test_a_group_exactly_on_a_boundary_goes_to_the_later_split() -> None:
    key = "Lola Bag"
    fraction = group_fraction(key)
    assert split_of(key, (fraction, 1.0 - fraction, 0.0)) == "val"
    assert split_of(key, (0.0, fraction, 1.0 - fraction)) == "test"


def test_default_ratios_are_eighty_ten_ten() -> None:
    for key in KEYS:
        assert split_of(key) == split_of(key, (0.8, 0.1, 0.1))
    rows = assign_splits(pd.DataFrame({"title": KEYS}))
    assert rows["split"].tolist() == [split_of(key, (0.8, 0.1, 0.1)) for key in KEYS]


def test_float_codes_and_padded_titles_land_with_their_plain_twins() -> None:
    by_code = assign_splits(pd.DataFrame({"product_code": [12.0, 12, 13.0, 13]}), by="product_code")
    assert by_code["split"].iloc[0] == by_code["split"].iloc[1] == split_of("12")
    assert by_code["split"].iloc[2] == by_code["split"].iloc[3] == split_of("13")
    padded = assign_splits(pd.DataFrame({"title": ["  Lola Bag ", "Lola Bag"]}))
    assert padded["split"].nunique() == 1


@pytest.mark.parametrize(
    ("ratios", "problem"),
    [
        ((0.8, 0.1), "three non-negative numbers"),
        ((0.9, 0.2, -0.1), "three non-negative numbers"),
        ((0.8, 0.1, float("nan")), "three non-negative numbers"),
        ((0.8, 0.1, 0.2), "sum to 1.1, expected 1"),
        ((0.7, 0.1, 0.1), "sum to 0.9, expected 1"),
        ((0.8, 0.1, 0.1 + 1.5e-6), "sum to 1, expected 1"),  # 1.5e-6 off is more than rounding
    ],
)
def test_bad_ratios_are_refused_saying_why(ratios, problem) -> None:
    with pytest.raises(DataError, match=problem):
        check_ratios(ratios)


def test_ratios_within_rounding_of_one_are_accepted() -> None:
    assert check_ratios((0.7, 0.2, 0.1)) == (0.7, 0.2, 0.1)
    assert check_ratios((1, 0, 0)) == (1.0, 0.0, 0.0)
    assert check_ratios((0.8, 0.1, 0.1 + 5e-7)) == (0.8, 0.1, 0.1 + 5e-7)
    assert parse_ratios(" 0.6, 0.2 ,0.2") == (0.6, 0.2, 0.2)
    with pytest.raises(DataError, match="expected three numbers"):
        parse_ratios("0.8,ten,0.1")


def test_unknown_group_key_is_refused() -> None:
    with pytest.raises(DataError, match="--by 'sku'"):
        assign_splits(pd.DataFrame({"title": ["a"]}), by="sku")


def test_split_report_counts_rows_per_split_in_train_val_test_order() -> None:
    rows = pd.DataFrame({"split": ["train", "train", "test"], "category3_code": ["BAGS", "BAGS", "COATS"]})
    lines = split_report(rows)
    assert [line.split()[0] for line in lines[1:]] == list(SPLIT_NAMES) == ["train", "val", "test"]
    assert lines[1].split()[1] == "2" and "BAGS 2" in lines[1]
    assert lines[2].split()[1] == "0" and lines[2].rstrip().endswith("-")
    assert "COATS 1" in lines[3]


def _write_manifest(directory, titles: list[str]) -> None:
    from phi3v_ray.data.fetch import write_manifest
    from phi3v_ray.data.schema import BURBERRY_COLUMNS

    rows = []
    for index, title in enumerate(titles):
        row = {name: "x" for name in BURBERRY_COLUMNS}
        row.update(
            product_code=index, title=title, full_price=1.0, price=1.0, full_price_eur=1.0, price_eur=1.0
        )
        row.update(flg_discount=0, status="ok", local_image_path=f"images/{index}.jpg")
        rows.append(row)
    frame = pd.DataFrame(rows)
    for name in ("product_code", "flg_discount"):
        frame[name] = frame[name].astype("Int64")
    write_manifest(frame, directory / "manifest.parquet")


def test_split_catalog_uses_eighty_ten_ten_by_default_and_load_split_reads_one_split(tmp_path) -> None:
    from phi3v_ray.data.split import load_split, split_catalog

    titles = [f"Product {i}" for i in range(60)]
    _write_manifest(tmp_path, titles)
    written = split_catalog(tmp_path)
    assert written["split"].tolist() == [split_of(title, (0.8, 0.1, 0.1)) for title in titles]
    for name in SPLIT_NAMES:
        part = load_split(tmp_path, name)
        expected = [t for t in titles if split_of(t, (0.8, 0.1, 0.1)) == name]
        assert part["title"].tolist() == expected
        assert part.index.tolist() == list(range(len(expected)))  # a fresh 0..n-1 index, no stray column
        assert "index" not in part.columns
        assert all(
            path == str(tmp_path / "images" / f"{titles.index(t)}.jpg")
            for t, path in zip(part["title"], part["image_path"], strict=True)
        )
    with pytest.raises(DataError, match="split 'dev'"):
        load_split(tmp_path, "dev")


def test_a_ratio_error_quotes_the_ratios_as_the_user_typed_them() -> None:
    with pytest.raises(DataError, match=r"--ratios '0\.8, 0\.1, 0\.2': sum to 1\.1"):
        parse_ratios("0.8, 0.1, 0.2")
