"""The prepared-data cache: what names an entry, what a reader may trust, and what the footers report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from phi3v_ray.data.prepared import (
    PREPARED_FORMAT,
    catalog_fingerprint,
    commit_entry,
    count_parquet_rows,
    decode_examples,
    encode_examples,
    entry_name,
    find_prepared,
    scratch_dir,
    uncompressed_parquet_bytes,
)


def _batch(sizes: list[tuple[int, int]]) -> dict:
    rng = np.random.default_rng(0)
    return {
        "row_id": np.arange(len(sizes)),
        "product_code": np.arange(100, 100 + len(sizes)),
        "title": [f"T{i}" for i in range(len(sizes))],
        "category": ["C"] * len(sizes),
        "full_price": np.linspace(1.5, 9.5, len(sizes)),
        "answer": [f"A{i}" for i in range(len(sizes))],
        "input_ids": [np.arange(i + 3, dtype=np.int32) for i in range(len(sizes))],
        "labels": [np.full(i + 3, -100, dtype=np.int32) for i in range(len(sizes))],
        "image_size": np.asarray(sizes, dtype=np.int32),
        "pixel_values": [rng.integers(0, 256, (3, h, w), dtype=np.uint8) for h, w in sizes],
    }


def test_non_square_canvases_round_trip_with_height_before_width() -> None:
    batch = _batch([(2, 5), (4, 3)])
    decoded = decode_examples(encode_examples(batch))
    for original, restored in zip(batch["pixel_values"], decoded["pixel_values"], strict=True):
        assert restored.shape == original.shape and np.array_equal(restored, original)
    assert decoded["image_size"].tolist() == [[2, 5], [4, 3]]
    assert decoded["full_price"].tolist() == batch["full_price"].tolist()


def test_a_canvas_that_disagrees_with_its_image_size_is_refused() -> None:
    batch = _batch([(2, 5)])
    batch["image_size"] = np.asarray([[5, 2]], dtype=np.int32)
    with pytest.raises(ValueError, match="does not match image_size"):
        encode_examples(batch)


def test_an_empty_table_decodes_to_no_rows_with_a_two_column_size_array() -> None:
    decoded = decode_examples(encode_examples(_batch([])))
    assert decoded["image_size"].shape == (0, 2) and decoded["pixel_values"] == []


def test_entry_names_say_split_and_whether_the_answer_was_left_out() -> None:
    assert entry_name("train", False, "abc") == "train-abc"
    assert entry_name("test", True, "abc") == "test-prompt-abc"


def test_fingerprint_treats_nan_as_missing_and_numpy_scalars_as_their_values(tmp_path: Path) -> None:
    plain = pd.DataFrame({"product_code": [1], "title": ["a"], "full_price": [None]}, dtype=object)
    numpy = pd.DataFrame(
        {"product_code": [np.int64(1)], "title": ["a"], "full_price": [float("nan")]}, dtype=object
    )
    assert catalog_fingerprint(plain) == catalog_fingerprint(numpy)
    other = pd.DataFrame({"product_code": [2], "title": ["a"], "full_price": [None]}, dtype=object)
    assert catalog_fingerprint(other) != catalog_fingerprint(plain)


def test_fingerprint_changes_when_an_image_appears_or_changes_size(tmp_path: Path) -> None:
    image = tmp_path / "1.jpg"
    rows = pd.DataFrame({"product_code": [1], "local_image_path": [str(image)]})
    missing = catalog_fingerprint(rows)
    image.write_bytes(b"1234")
    present = catalog_fingerprint(rows)
    image.write_bytes(b"12345")
    assert len({missing, present, catalog_fingerprint(rows)}) == 3


def test_only_a_finished_entry_of_this_format_is_found(tmp_path: Path) -> None:
    scratch = scratch_dir(tmp_path, "train-k")
    assert scratch.name.startswith(".train-k.tmp-") and find_prepared(tmp_path, "train-k") is None
    entry = commit_entry(scratch, tmp_path, "train-k", {"rows": 3})
    assert entry.directory == tmp_path / "train-k" and not scratch.exists()
    assert entry.meta == {"format": PREPARED_FORMAT, "rows": 3}
    assert find_prepared(tmp_path, "train-k").meta == entry.meta
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "meta.json").write_text(json.dumps({"format": "phi3v-ray-prepared/0"}))
    assert find_prepared(tmp_path, "old") is None


def test_a_second_writer_of_the_same_entry_keeps_the_first(tmp_path: Path) -> None:
    first = commit_entry(scratch_dir(tmp_path, "k"), tmp_path, "k", {"writer": 1})
    (first.directory / "examples").mkdir()
    second_scratch = scratch_dir(tmp_path, "k")
    (second_scratch / "examples").mkdir()
    (second_scratch / "examples" / "x").write_text("x")
    second = commit_entry(second_scratch, tmp_path, "k", {"writer": 2})
    assert second.meta["writer"] == 1 and not second_scratch.exists()


def test_row_counts_and_sizes_come_from_every_parquet_file(tmp_path: Path) -> None:
    assert (
        count_parquet_rows(tmp_path / "absent") == 0 and uncompressed_parquet_bytes(tmp_path / "absent") == 0
    )
    table = pa.table({"x": list(range(10))})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=4)
    pq.write_table(table.slice(0, 3), tmp_path / "b.parquet")
    assert count_parquet_rows(tmp_path) == 13
    footer_a, footer_b = (
        pq.ParquetFile(tmp_path / "a.parquet").metadata,
        pq.ParquetFile(tmp_path / "b.parquet").metadata,
    )
    expected = sum(footer_a.row_group(i).total_byte_size for i in range(footer_a.num_row_groups)) + sum(
        footer_b.row_group(i).total_byte_size for i in range(footer_b.num_row_groups)
    )
    assert footer_a.num_row_groups == 3 and uncompressed_parquet_bytes(tmp_path) == expected


def test_cache_keys_stay_the_same_across_releases_so_existing_caches_keep_hitting() -> None:
    from phi3v_ray.data.prepared import cache_key

    key = cache_key(
        fingerprint="f",
        split="train",
        prompt_only=False,
        processor_settings={"num_crops": 4, "crop_size": 336},
        max_examples=None,
    )
    # Changing this value invalidates every prepared cache on disk: bump PIPELINE_VERSION on purpose, then here.
    assert key == "a9673a928a88b0bc5146"
    reordered = cache_key(
        fingerprint="f",
        split="train",
        prompt_only=False,
        processor_settings={"crop_size": 336, "num_crops": 4},
        max_examples=None,
    )
    assert reordered == key  # settings are compared as a mapping, not by their order


def test_fingerprint_tells_a_number_from_its_text() -> None:
    as_number = pd.DataFrame({"product_code": [1], "title": ["a"]})
    as_text = pd.DataFrame({"product_code": ["1"], "title": ["a"]})
    assert catalog_fingerprint(as_number) != catalog_fingerprint(as_text)


def test_an_entry_names_its_examples_folder_and_rejects_file(tmp_path: Path) -> None:
    entry = commit_entry(scratch_dir(tmp_path, "e"), tmp_path, "e", {})
    assert entry.examples_dir == tmp_path / "e" / "examples"
    assert entry.rejects_path == tmp_path / "e" / "rejects.parquet"
    pq.write_table(pa.table({"row_id": [3], "reason": ["missing_file"]}), entry.rejects_path)
    assert entry.read_rejects().to_dict("records") == [{"row_id": 3, "reason": "missing_file"}]


def test_a_failed_commit_with_no_entry_in_place_is_an_error(tmp_path: Path) -> None:
    scratch = scratch_dir(tmp_path, "f")
    (tmp_path / "f").write_text("a file where the entry folder should go")
    with pytest.raises(OSError):
        commit_entry(scratch, tmp_path, "f", {})


def test_a_scratch_folder_can_be_made_under_a_cache_root_that_does_not_exist_yet(tmp_path: Path) -> None:
    scratch = scratch_dir(tmp_path / "new" / "cache", "train-k")
    assert scratch.is_dir() and scratch.parent == tmp_path / "new" / "cache"
