"""`data fetch` into a bucket: Ray tasks write images straight to object storage, the manifest lands beside them, and
a rerun (also after a kill) lists what the bucket holds, verifies it and fetches only the rest.

The bucket lives on moto's standalone S3 server (ThreadedMotoServer) on loopback, the same protocol emulator Ray's
own S3 tests use, reached through the same pyarrow client as AWS with only the endpoint overridden (tests/conftest.py
sets it; AWS is never contacted). The catalog's images come from a loopback HTTP server, which the fetch may only
reach with `allow_private_addresses` (the SSRF guard refuses loopback by default).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from test_data_fetch import KILLED_RUN, CatalogServer, catalog_rows, image_bytes

from phi3v_ray.data import fetch
from phi3v_ray.data.fetch import FetchOptions, fetch_catalog
from phi3v_ray.data.schema import STATUS_OK
from phi3v_ray.errors import DataError, StorageError
from phi3v_ray.storage import location

REPO_ROOT = Path(__file__).resolve().parents[1]
OPTIONS = FetchOptions(
    read_timeout_s=5.0, retries=1, backoff_s=0.05, threads_per_task=4, rows_per_task=3,
    allow_private_addresses=True,  # the catalog server is on loopback
)  # fmt: skip


@pytest.fixture
def server() -> Iterator[CatalogServer]:
    running = CatalogServer()
    yield running
    running.close()


def _read_manifest(out: str) -> pd.DataFrame:
    return pd.read_parquet(BytesIO(location(out).join("manifest.parquet").read_bytes()))


def _stored(out: str) -> dict[str, int]:
    """Every object below the catalog prefix (relative key -> size)."""
    root = location(out)
    return {where.uri.removeprefix(root.uri + "/"): info.size for where, info in root.files(recursive=True)}


def test_fetch_writes_into_the_bucket_and_a_rerun_refetches_only_what_is_missing_or_broken(
    ray_local, bucket: str, server: CatalogServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a URI mistaken for a relative path (an "s3:" folder) would land here
    formats = {1: "JPEG", 2: "PNG", 3: "WEBP", 4: "JPEG", 5: "PNG", 6: "JPEG", 7: "JPEG"}
    for code, image_format in formats.items():
        server.routes[f"/img/{code}"] = ("image", image_bytes(image_format))
    specs = [(code, f"{server.base}/img/{code}", 10.0, f"P{code}") for code in formats]
    specs += [(8, f"{server.base}/gone", 10.0, "Gone"), (9, "", 10.0, "No URL")]
    specs += [("../../etc/passwd", f"{server.base}/img/1", 10.0, "Traversal")]
    table = catalog_rows(specs)
    out = f"{bucket}/catalog"

    summary = fetch_catalog(table, out, OPTIONS, show_progress=False)
    manifest = _read_manifest(out)
    assert summary.manifest_path == f"{out}/manifest.parquet"
    assert len(manifest) == len(table) == summary.total == sum(summary.by_outcome.values())
    assert summary.by_outcome == {"ok": 7, "http_error": 1, "missing_url": 1, "bad_product_code": 1}
    assert (summary.downloaded, summary.reused) == (7, 0)
    ok = manifest[manifest["status"] == STATUS_OK]
    stored = _stored(out)
    assert sorted(stored) == sorted(["manifest.parquet", *ok["local_image_path"]])  # nothing outside images/
    for key in ok["local_image_path"]:
        Image.open(BytesIO(location(out).join(key).read_bytes())).load()
    assert not list(tmp_path.iterdir())  # nothing written to local disk

    images = location(out).join("images")
    images.join("1.jpg").write_bytes(b"broken")  # a corrupt object, an empty one and a missing one
    images.join("2.png").write_bytes(b"")
    images.join("3.webp").delete()
    before = server.requests.copy()
    again = fetch_catalog(table, out, OPTIONS, show_progress=False)
    assert (again.downloaded, again.reused) == (3, 4)
    # the three broken images again, and the failed row (failures are always retried); nothing that is intact
    assert server.requests - before == Counter({"/img/1": 1, "/img/2": 1, "/img/3": 1, "/gone": 1})
    assert _read_manifest(out)["status"].tolist() == manifest["status"].tolist()
    assert _stored(out).keys() == stored.keys() and not list(tmp_path.iterdir())


def test_a_catalog_in_the_bucket_is_read_and_a_rerun_lists_the_images_once(
    bucket: str, server: CatalogServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server.routes["/a"] = ("image", image_bytes("PNG"))
    source = location(f"{bucket}/inputs/catalog.csv")
    csv = catalog_rows([(code, f"{server.base}/a", 5.0, f"T{code}") for code in range(1, 6)]).to_csv(
        index=False
    )
    source.write_text(csv)
    out = f"{bucket}/fetched"
    first = fetch_catalog(source.uri, out, OPTIONS, use_ray=False, show_progress=False)
    assert first.by_outcome == {"ok": 5} and first.downloaded == 5

    listings: list[str] = []
    real_scan = fetch.scan_images
    monkeypatch.setattr(fetch, "scan_images", lambda images: listings.append(images.uri) or real_scan(images))
    again = fetch_catalog(source.uri, out, OPTIONS, use_ray=False, show_progress=False)
    assert (again.downloaded, again.reused) == (0, 5) and server.requests["/a"] == 5
    assert listings == [f"{out}/images"]  # one listing for the whole run, not a request per row


def test_a_missing_bucket_is_named_before_any_download(s3_server: str, server: CatalogServer) -> None:
    server.routes["/a"] = ("image", image_bytes("PNG"))
    table = catalog_rows([(1, f"{server.base}/a", 5.0, "T")])
    with pytest.raises(StorageError, match=r"^s3://no-such-bucket-phi3v-fetch/catalog/images: bucket "):
        fetch_catalog(table, "s3://no-such-bucket-phi3v-fetch/catalog", OPTIONS, use_ray=False)
    assert sum(server.requests.values()) == 0


# The killed run's script is test_data_fetch's (same child process, here writing into the bucket).
ANSWERED_BEFORE_KILL = 6


def test_a_fetch_into_the_bucket_killed_midway_resumes_without_refetching(
    ray_local, bucket: str, tmp_path: Path
) -> None:
    """The first server answers 6 requests and stalls every later one, so the killed run stored exactly 6 objects
    however fast the machine is; the rerun (against a second server, counted apart) fetches only the other 18."""
    frozen, fresh = CatalogServer(answer_first=ANSWERED_BEFORE_KILL), CatalogServer()
    try:
        jpeg = image_bytes("JPEG")
        for index in range(24):
            frozen.routes[f"/img/{index}"] = fresh.routes[f"/img/{index}"] = ("image", jpeg)
        codes = [100 + i for i in range(24)]
        catalog_rows(
            [(code, f"{frozen.base}/img/{i}", 5.0, f"T{i}") for i, code in enumerate(codes)]
        ).to_parquet(tmp_path / "input.parquet")
        out = f"{bucket}/catalog"
        images = location(out).join("images")
        child = subprocess.Popen(
            [sys.executable, "-c", KILLED_RUN, ray_local.get_runtime_context().gcs_address,
             str(tmp_path / "input.parquet"), out],
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 300  # generous: Ray workers start slowly on a loaded machine
            while len(list(images.files())) < ANSWERED_BEFORE_KILL:
                assert child.poll() is None, "the run finished or crashed before it could be killed"
                assert time.monotonic() < deadline, f"{frozen.answered} answered"
                time.sleep(0.2)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        assert not location(out).join("manifest.parquet").exists()
        finished = {where.name for where, _ in images.files()}
        assert len(finished) == frozen.answered == ANSWERED_BEFORE_KILL

        rerun = catalog_rows([(code, f"{fresh.base}/img/{i}", 5.0, f"T{i}") for i, code in enumerate(codes)])
        summary = fetch_catalog(rerun, out, OPTIONS, show_progress=False)
        assert summary.by_outcome == {"ok": 24}
        assert (summary.reused, summary.downloaded) == (ANSWERED_BEFORE_KILL, 24 - ANSWERED_BEFORE_KILL)
        refetched = {int(path.rsplit("/", 1)[1]) for path in fresh.requests}
        assert sum(fresh.requests.values()) == summary.downloaded  # one request per missing image
        assert not {f"{codes[i]}.jpg" for i in refetched} & finished  # nothing finished was fetched again
        assert len(_read_manifest(out)) == 24 and len(list(images.files())) == 24
    finally:
        frozen.close()
        fresh.close()


def test_a_prefix_holding_another_catalog_is_refused_before_any_download(
    bucket: str, server: CatalogServer
) -> None:
    for code in range(1, 5):
        server.routes[f"/img/{code}"] = ("image", image_bytes("JPEG"))
    first = catalog_rows([(code, f"{server.base}/img/{code}", 10.0, f"P{code}") for code in range(1, 5)])
    out = f"{bucket}/catalog"
    fetch_catalog(first, out, OPTIONS, use_ray=False, show_progress=False)
    # The same catalog with one product added resumes (most of its products are the ones already there) ...
    grown = catalog_rows(
        [(code, f"{server.base}/img/{min(code, 4)}", 10.0, f"P{code}") for code in range(1, 6)]
    )
    assert fetch_catalog(grown, out, OPTIONS, use_ray=False, show_progress=False).reused == 4
    # ... a different catalog does not: nothing is downloaded and the error names the prefix.
    served = sum(server.requests.values())
    other = catalog_rows([(code, f"{server.base}/img/1", 10.0, f"Q{code}") for code in range(50, 55)])
    with pytest.raises(
        DataError, match=r"catalog: already holds another catalog \(manifest.parquet lists 5 products, 0"
    ):
        fetch_catalog(other, out, OPTIONS, use_ray=False, show_progress=False)
    assert sum(server.requests.values()) == served
