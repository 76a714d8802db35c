"""The prepared-split cache without Ray: explicit parquet layout round trip and what invalidates a key."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from phi3v_ray.data import prepared


def _examples() -> dict:
    rng = np.random.default_rng(0)
    return {
        "row_id": np.array([0, 5]),
        "product_code": np.array([35000001, 71234567]),
        "title": np.array(["Check Scarf", "Quilted Jacket"], dtype=object),
        "category": np.array(["SCARVES", "QUILTED JACKETS"], dtype=object),
        "full_price": np.array([450.0, 1890.0]),
        "answer": np.array(["a", "b"], dtype=object),
        "input_ids": [np.arange(7, dtype=np.int32), np.arange(11, dtype=np.int32)],
        "labels": [np.full(7, -100, np.int32), np.r_[np.full(8, -100), [5, 6, 3]].astype(np.int32)],
        "image_size": np.array([[56, 112], [168, 56]], dtype=np.int32),
        "pixel_values": [
            rng.integers(0, 256, (3, 56, 112), dtype=np.uint8),
            rng.integers(0, 256, (3, 168, 56), dtype=np.uint8),
        ],
    }


def test_parquet_layout_round_trips_examples_exactly() -> None:
    original = _examples()
    buffer = io.BytesIO()
    pq.write_table(prepared.encode_examples(original), buffer)
    buffer.seek(0)
    restored = prepared.decode_examples(pq.read_table(buffer))
    for name in ("input_ids", "labels", "pixel_values"):
        for before, after in zip(original[name], restored[name], strict=True):
            assert after.dtype == before.dtype and np.array_equal(after, before)
    assert np.array_equal(restored["image_size"], original["image_size"])
    assert restored["title"].tolist() == original["title"].tolist()
    assert restored["product_code"].tolist() == original["product_code"].tolist()


def test_parquet_layout_uses_only_plain_arrow_types() -> None:
    # No Ray tensor extension types (whose metadata may fall back to pickle) and no pandas object columns.
    schema = prepared.encode_examples(_examples()).schema
    assert all(not isinstance(field.type, pa.ExtensionType) for field in schema)
    assert schema == prepared.EXAMPLE_SCHEMA


def _rows(image: Path) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "product_code": [1],
            "title": ["Coat"],
            "category3_code": ["TRENCH COATS"],
            "full_price": [100.0],
            "local_image_path": [str(image)],
        }
    )


def test_fingerprint_is_stable_for_unchanged_catalog_and_changes_with_an_image_file(tmp_path: Path) -> None:
    image = tmp_path / "a.jpg"
    image.write_bytes(b"x" * 10)
    first = prepared.catalog_fingerprint(_rows(image))
    assert prepared.catalog_fingerprint(_rows(image)) == first
    image.write_bytes(b"y" * 12)
    os.utime(image, ns=(1, 2))
    assert prepared.catalog_fingerprint(_rows(image)) != first


def test_fingerprint_changes_with_ground_truth(tmp_path: Path) -> None:
    image = tmp_path / "a.jpg"
    image.write_bytes(b"x")
    rows = _rows(image)
    changed = rows.assign(full_price=[101.0])
    assert prepared.catalog_fingerprint(rows) != prepared.catalog_fingerprint(changed)


def test_cache_key_depends_on_every_input() -> None:
    base = {
        "fingerprint": "f",
        "split": "train",
        "prompt_only": False,
        "processor_settings": {"num_crops": 16},
        "max_examples": None,
    }
    key = prepared.cache_key(**base)
    for name, value in [
        ("fingerprint", "g"),
        ("split", "val"),
        ("prompt_only", True),
        ("processor_settings", {"num_crops": 4}),
        ("max_examples", 10),
    ]:
        assert prepared.cache_key(**{**base, name: value}) != key, name


def test_unfinished_entry_without_meta_is_not_found(tmp_path: Path) -> None:
    (tmp_path / "train-abc" / "examples").mkdir(parents=True)
    assert prepared.find_prepared(tmp_path, "train-abc") is None
    scratch = prepared.scratch_dir(tmp_path, "train-abc2")
    entry = prepared.commit_entry(scratch, tmp_path, "train-abc2", {"input_rows": 0})
    assert prepared.find_prepared(tmp_path, "train-abc2") == entry
