"""The one filesystem layer: local paths and s3:// URIs behave the same; bad locations get one clear line.

S3 here is moto's standalone server on loopback (the emulator Ray's own S3 tests use), reached through the same
pyarrow client as AWS with only the endpoint overridden (tests/conftest.py sets it; AWS is never contacted).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.fs as pafs
import pytest

from phi3v_ray.errors import StorageError
from phi3v_ray.storage import explain, is_uri, location


def _roundtrip(root) -> None:
    target = root.join("images", "a.bin")
    assert not target.exists()
    target.write_bytes(b"\x00abc")
    root.join("images", "b.bin").write_text("hello")
    root.join("manifest.txt").write_text("m")
    assert target.read_bytes() == b"\x00abc" and target.is_file()
    assert root.join("images").is_dir() and root.join("images", "b.bin").read_text() == "hello"
    names = sorted(loc.name for loc, _ in root.join("images").files())
    assert names == ["a.bin", "b.bin"]
    everything = sorted(loc.uri.removeprefix(root.uri) for loc, _ in root.files(recursive=True))
    assert everything == ["/images/a.bin", "/images/b.bin", "/manifest.txt"]
    sizes = {loc.name: info.size for loc, info in root.join("images").files()}
    assert sizes == {"a.bin": 4, "b.bin": 5}
    root.join("images").delete()
    assert not target.exists() and [loc.name for loc, _ in root.files(recursive=True)] == ["manifest.txt"]


def test_local_paths_write_whole_files_and_list_like_a_bucket(tmp_path: Path) -> None:
    root = location(tmp_path / "catalog")
    assert not root.is_remote and root.uri == str((tmp_path / "catalog").resolve())
    _roundtrip(root)
    assert not list((tmp_path / "catalog").rglob("*.part-*"))  # the temporary name never stays behind


def test_s3_uris_behave_like_local_paths(bucket: str) -> None:
    root = location(f"{bucket}/catalog/")
    assert root.is_remote and root.uri == f"{bucket}/catalog" and root.path == f"{bucket[5:]}/catalog"
    assert isinstance(root.filesystem, pafs.S3FileSystem)
    _roundtrip(root)


def test_file_uris_with_three_slashes_are_local_paths(tmp_path: Path) -> None:
    assert location(f"file://{tmp_path}/x").path == str(tmp_path / "x")
    assert (
        not is_uri(f"file://{tmp_path}") and is_uri("s3://b/k") and is_uri("gs://b") and not is_uri("runs/x")
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("file://data/catalog", "names host 'data'"),
        ("s3a://bucket/x", "unsupported scheme 's3a'"),
        ("http://example.com/x", "unsupported scheme 'http'"),
        ("s3:///key", "no bucket name"),
    ],
)
def test_misspelled_locations_are_refused_with_the_fix(text: str, expected: str) -> None:
    with pytest.raises(StorageError, match=expected) as caught:
        location(text)
    assert str(caught.value).startswith(text)


def test_a_bucket_that_does_not_exist_is_named(s3_server) -> None:
    missing = location("s3://no-such-bucket-phi3v/catalog/manifest.parquet")
    with pytest.raises(StorageError) as caught:
        missing.write_bytes(b"x")
    message = str(caught.value)
    assert message.startswith("s3://no-such-bucket-phi3v/catalog/manifest.parquet: ")
    assert "'no-such-bucket-phi3v' does not exist" in message


@pytest.mark.parametrize(
    ("pyarrow_text", "expected"),
    [
        # The first lines pyarrow's S3 client raises for these cases (Arrow's AWS error names).
        (
            "When reading information for key 'k' in bucket 'b': AWS Error ACCESS_DENIED during HeadObject",
            "access denied",
        ),
        (
            "When listing objects under key 'k' in bucket 'b': AWS Error UNKNOWN (HTTP status 403) during ListObjectsV2",
            "access denied",
        ),
        (
            "When creating key 'k' in bucket 'b': AWS Error NETWORK_CONNECTION during PutObject: curlCode: 7",
            "no usable credentials",
        ),
    ],
)
def test_storage_errors_say_what_to_do(pyarrow_text: str, expected: str) -> None:
    message = str(explain(OSError(pyarrow_text), "s3://b/k"))
    assert message.startswith("s3://b/k: ") and expected in message
