"""split and prepare from a catalog in a bucket: images read by Ray Data actors, prepared parquet written back.

The bucket is moto's standalone S3 server (ThreadedMotoServer) on loopback, the protocol emulator Ray's own S3 tests
use, reached through the same pyarrow client as AWS with only the endpoint overridden (tests/conftest.py sets it;
AWS is never contacted). The catalog is a local synth catalog copied into the bucket with phi3v_ray.storage.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from phi3v_ray.config import ExperimentConfig
from phi3v_ray.data import images, prepared
from phi3v_ray.data.datasets import build_prepared_dataset, plan_split, write_prepared_split
from phi3v_ray.data.split import load_split_rows, split_catalog
from phi3v_ray.data.synth import synth_catalog
from phi3v_ray.errors import DataError, StorageError
from phi3v_ray.storage import Location, location, upload_tree

ROWS = 24


@pytest.fixture(scope="module")
def module_bucket(s3_server) -> str:
    """One bucket for the module (the catalog is copied in once); each test writes under its own prefixes."""
    import boto3

    name = f"prep-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="module")
def local_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth_catalog(tmp_path_factory.mktemp("local-catalog"), ROWS, seed=5, overwrite=True)


@pytest.fixture(scope="module")
def catalog_uri(module_bucket: str, local_catalog: Path) -> str:
    """The synth catalog in the bucket, split there, with one image object deleted after the manifest was written."""
    uri = f"{module_bucket}/catalog"
    assert upload_tree(local_catalog, uri) > ROWS  # the catalog files and every image, through storage
    split_catalog(uri)
    rows = load_split_rows(uri, "val")
    location(rows["local_image_path"].iloc[0]).delete()
    return uri


def _config(catalog: str, prepared_dir: str) -> ExperimentConfig:
    config = ExperimentConfig()
    config.data.catalog_dir = catalog
    config.data.prepared_dir = prepared_dir
    config.data.preprocess_cpus = 0.5
    return config


def _local_files(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


def test_split_in_a_bucket_gives_object_uris_that_decode(catalog_uri: str, local_catalog: Path) -> None:
    assert location(f"{catalog_uri}/splits.parquet").is_file()
    local_split = split_catalog(
        local_catalog
    )  # the same catalog splits the same way locally and in the bucket
    parts = {name: load_split_rows(catalog_uri, name) for name in ("train", "val", "test")}
    assert sum(len(part) for part in parts.values()) == len(local_split)
    assert sorted(pd.concat(parts.values())["product_code"]) == sorted(local_split["product_code"])
    first, deleted = parts["train"]["local_image_path"].iloc[0], parts["val"]["local_image_path"].iloc[0]
    assert first.startswith(f"{catalog_uri}/images/")
    decoded = images.decode_image(first)
    assert decoded.ok and decoded.image.mode == "RGB"
    missing = images.decode_image(deleted)
    assert missing.reason == images.REASON_MISSING and deleted in missing.detail
    assert (
        images.decode_image("s3a://bucket/x.jpg").reason == images.REASON_MISSING
    )  # a reject, never a raise


def test_prefetched_objects_decode_exactly_as_a_direct_read_and_in_row_order(catalog_uri: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    train, val = load_split_rows(catalog_uri, "train"), load_split_rows(catalog_uri, "val")
    uris = list(train["local_image_path"].head(6))
    deleted = val["local_image_path"].iloc[0]
    local = str(Path(__file__))  # a local path is never prefetched: PIL reads it lazily
    paths = [*uris, deleted, None, local]
    with ThreadPoolExecutor(max_workers=4) as pool:
        fetches = images.prefetch_image_sources(paths, pool)
        sources = [None if fetch is None else fetch.result() for fetch in fetches]
    assert sources[-2:] == [None, None]
    for uri, source in zip(
        uris, sources, strict=False
    ):  # order kept: each source holds its own object's bytes
        opened, size = source
        assert opened.getvalue() == location(uri).read_bytes() and size == len(opened.getvalue())
        direct, ahead = images.decode_image(uri), images.decode_image(uri, source=source)
        assert ahead.ok and list(ahead.image.getdata()) == list(direct.image.getdata())
    missing = sources[len(uris)]
    assert isinstance(missing, images.DecodedImage) and missing.reason == images.REASON_MISSING
    assert deleted in missing.detail


def test_fingerprint_uses_the_bucket_listing_and_changes_when_an_object_changes(catalog_uri: str) -> None:
    rows = load_split_rows(catalog_uri, "train").head(3)
    first = prepared.catalog_fingerprint(rows)
    assert prepared.catalog_fingerprint(rows) == first
    identities = prepared.image_identities(rows["local_image_path"])
    assert set(identities) == set(rows["local_image_path"])
    target = location(rows["local_image_path"].iloc[2])
    original = target.read_bytes()
    try:
        target.write_bytes(original + b"\0")
        assert prepared.catalog_fingerprint(rows) != first
    finally:
        target.write_bytes(original)


def test_prepare_reads_the_bucket_writes_the_bucket_and_a_rerun_reuses_it(
    ray_local, catalog_uri: str, module_bucket: str, local_catalog: Path
) -> None:
    before = _local_files(local_catalog)
    config = _config(catalog_uri, f"{module_bucket}/prepared-{uuid.uuid4().hex[:6]}")
    entry, summary, reused = write_prepared_split(config, "val", prompt_only=False)
    assert not reused and summary.reconciles and summary.by_reason == {images.REASON_MISSING: 1}
    assert summary.input_rows == len(load_split_rows(catalog_uri, "val")) and summary.prepared > 0
    assert isinstance(entry.directory, Location) and entry.directory.uri.startswith(config.data.prepared_dir)
    assert location(
        f"{config.data.prepared_dir}/{plan_split(config, 'val', prompt_only=False).name}/meta.json"
    ).is_file()
    assert prepared.count_parquet_rows(entry.examples_dir) == summary.prepared
    assert entry.read_rejects()["reason"].tolist() == [images.REASON_MISSING]
    for file, _ in location(
        entry.examples_dir
    ).files():  # zstd: half the bytes of parquet's default to upload
        with file.filesystem.open_input_file(file.path) as handle:
            metadata = pq.ParquetFile(handle).metadata
            codecs = {metadata.row_group(0).column(i).compression for i in range(metadata.num_columns)}
        assert codecs == {"ZSTD"}, (file, codecs)

    again, again_summary, reused_again = write_prepared_split(config, "val", prompt_only=False)
    assert reused_again and again.directory == entry.directory and again_summary == summary
    dataset, rejects = build_prepared_dataset(config, "val", prompt_only=False)
    assert rejects.cached_path == entry.rejects_path
    assert sorted(row["row_id"] for row in dataset.take_all()) == sorted(
        set(range(summary.input_rows)) - set(entry.read_rejects()["row_id"])
    )
    assert _local_files(local_catalog) == before  # nothing was written next to the local copy
    assert not Path("s3:").exists() and not Path(os.getcwd(), "s3:").exists()


def test_an_interrupted_prepare_commits_nothing_and_the_rerun_redoes_only_that_split(
    ray_local, catalog_uri: str, module_bucket: str, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from phi3v_ray.cli import main

    cache = f"{module_bucket}/prepared-{uuid.uuid4().hex[:6]}"
    config = _config(catalog_uri, cache)
    test_name = plan_split(config, "test", prompt_only=True).name
    # A prepare killed outright leaves an attempt prefix with data but no meta.json: it must never count.
    stale = location(cache).join(test_name, "attempt-0000dead", "examples", "part.parquet")
    stale.write_bytes(b"not parquet")
    assert prepared.find_prepared(cache, test_name) is None

    real_commit = prepared.commit_entry

    def crash_on_test(scratch, root, name, meta):
        if name == test_name:
            raise KeyboardInterrupt("interrupted before the commit")
        return real_commit(scratch, root, name, meta)

    argv = ["data", "prepare", "--catalog", catalog_uri, "--splits", "val,test"]
    argv += ["--set", f"data.prepared_dir={cache}"]
    monkeypatch.setattr(prepared, "commit_entry", crash_on_test)
    assert main(argv) == 130  # the CLI reports the interruption
    monkeypatch.undo()
    assert prepared.find_prepared(cache, test_name) is None
    capsys.readouterr()

    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("reused") == 1 and "val: reused" in out and "(ok)" in out and "MISMATCH" not in out
    entry = prepared.find_prepared(cache, test_name)
    assert entry is not None and entry.meta["prepared"] + entry.meta["rejected"] == entry.meta["input_rows"]
    attempts = [info.path for info in location(cache).join(test_name).list()]
    assert [Path(path).name for path in attempts] == [
        entry.directory.name,
        "meta.json",
    ]  # the stale one is gone


def test_split_command_on_a_bucket_and_clear_errors_for_bad_locations(
    catalog_uri: str, module_bucket: str, capsys
) -> None:
    from phi3v_ray.cli import main

    assert main(["data", "split", catalog_uri, "--ratios", "0.5,0.25,0.25"]) == 0
    assert f"to {catalog_uri}/splits.parquet" in capsys.readouterr().out
    split_catalog(catalog_uri)  # back to the default ratios for the other tests in this module
    with pytest.raises(StorageError, match="'no-such-bucket-phi3v' does not exist"):
        split_catalog("s3://no-such-bucket-phi3v/catalog")
    with pytest.raises(DataError, match=r"holds catalog.*, not a catalog\)$"):
        split_catalog(module_bucket)  # the bucket root: it holds a catalog prefix, but is none itself
    with pytest.raises(DataError, match="is a file; give the folder or prefix that holds manifest.parquet"):
        split_catalog(f"{catalog_uri}/manifest.parquet")
    with pytest.raises(DataError, match=f"data.prepared_dir {catalog_uri}: already holds a catalog"):
        write_prepared_split(_config(catalog_uri, catalog_uri), "val", prompt_only=False)
