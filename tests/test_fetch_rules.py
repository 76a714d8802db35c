"""Download rules of one image, against a loopback HTTP server: retries, limits, verification, resumption."""

from __future__ import annotations

import io
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from phi3v_ray.data import download, fetch, url_guard
from phi3v_ray.data.fetch import (
    FetchOptions,
    FetchSummary,
    fetch_catalog,
    fetch_many,
    fetch_one,
    find_existing_image,
    remove_stale_partials,
    safe_file_stem,
)
from phi3v_ray.data.url_guard import address_class
from phi3v_ray.errors import DataError

# The test server is on loopback, which fetch refuses by default (SSRF guard): these tests opt in explicitly.
OPTIONS = FetchOptions(
    connect_timeout_s=5.0,
    read_timeout_s=10.0,
    retries=2,
    backoff_s=0.0,
    max_bytes=50_000,
    allow_private_addresses=True,
)


def image_bytes(kind: str = "PNG", size: tuple[int, int] = (8, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, kind)
    return buffer.getvalue()


class Server:
    """path -> (status, body, declare_length); counts requests per path."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes, bool]] = {}
        self.requests: Counter[str] = Counter()
        routes, requests = self.routes, self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                requests[self.path] += 1
                status, body, declare = routes.get(self.path, (404, b"", True))
                self.send_response(status)
                if 300 <= status < 400:  # a redirect: the body names the target
                    self.send_header("Location", body.decode())
                if declare:
                    self.send_header("Content-Length", str(len(body)))
                else:
                    self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()


@pytest.fixture(scope="module")
def server():
    running = Server()
    yield running
    running.httpd.shutdown()


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    recorded: list[float] = []
    monkeypatch.setattr(fetch.time, "sleep", recorded.append)
    return recorded


def test_server_errors_are_retried_with_doubling_backoff_then_reported(
    server, tmp_path: Path, sleeps
) -> None:
    server.routes["/503"] = (503, b"busy", True)
    options = FetchOptions(retries=3, backoff_s=0.25, read_timeout_s=10.0, allow_private_addresses=True)
    status, name, new = fetch_one(server.base + "/503", "a", tmp_path, options)
    assert (status, name, new) == ("http_error: HTTP 503 (after 4 attempts)", None, False)
    assert server.requests["/503"] == 4
    assert sleeps == [0.25, 0.5, 1.0]


@pytest.mark.parametrize("code", [400, 404, 499])
def test_client_errors_are_final_after_one_request(server, tmp_path: Path, sleeps, code: int) -> None:
    path = f"/client{code}"
    server.routes[path] = (code, b"no", True)
    assert fetch_one(server.base + path, "a", tmp_path, OPTIONS) == (f"http_error: HTTP {code}", None, False)
    assert server.requests[path] == 1 and sleeps == []


def test_a_500_is_retried(server, tmp_path: Path, sleeps) -> None:
    server.routes["/500"] = (500, b"", True)
    status, _, _ = fetch_one(server.base + "/500", "a", tmp_path, OPTIONS)
    assert status == "http_error: HTTP 500 (after 3 attempts)" and server.requests["/500"] == 3


def test_a_body_of_exactly_max_bytes_is_accepted_and_one_byte_more_is_refused(server, tmp_path: Path) -> None:
    payload = image_bytes("BMP", (40, 40))
    exact = FetchOptions(max_bytes=len(payload), retries=0, allow_private_addresses=True)
    for declare in (True, False):
        path = f"/exact-{declare}"
        server.routes[path] = (200, payload, declare)
        status, name, _ = fetch_one(server.base + path, f"exact{declare}", tmp_path, exact)
        assert (status, name) == ("ok", f"exact{declare}.bmp")
    smaller = FetchOptions(max_bytes=len(payload) - 1, retries=0, allow_private_addresses=True)
    server.routes["/declared"] = (200, payload, True)
    assert fetch_one(server.base + "/declared", "d", tmp_path, smaller)[0] == (
        f"too_large: {len(payload)} bytes, expected at most {len(payload) - 1}"
    )
    server.routes["/streamed"] = (200, payload, False)
    assert fetch_one(server.base + "/streamed", "s", tmp_path, smaller)[0] == (
        f"too_large: over {len(payload) - 1} bytes"
    )


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"<!DOCTYPE html><html>nope</html>", "not_an_image: got an HTML page, expected an image"),
        (b"\x00\x01garbage-bytes", "not_an_image: got 15 unknown bytes, expected an image"),
    ],
)
def test_a_response_that_is_not_an_image_is_refused_saying_what_it_was(
    server, tmp_path, body, status
) -> None:
    server.routes["/not-image"] = (200, body, True)
    assert fetch_one(server.base + "/not-image", "n", tmp_path, OPTIONS) == (status, None, False)


def test_a_truncated_image_is_refused(server, tmp_path: Path) -> None:
    server.routes["/cut"] = (200, image_bytes("JPEG", (64, 64))[:300], True)
    status, name, _ = fetch_one(server.base + "/cut", "c", tmp_path, OPTIONS)
    assert status.startswith("truncated_image: ") and name is None


@pytest.mark.parametrize(
    ("kind", "extension"), [("JPEG", "jpg"), ("PNG", "png"), ("GIF", "gif"), ("TIFF", "tif")]
)
def test_a_stored_image_is_named_by_its_decoded_format(server, tmp_path: Path, kind, extension) -> None:
    server.routes[f"/{kind}"] = (200, image_bytes(kind), True)
    status, name, new = fetch_one(server.base + f"/{kind}", "p1", tmp_path, OPTIONS)
    assert (status, name, new) == ("ok", f"p1.{extension}", True)
    assert (tmp_path / name).read_bytes() == image_bytes(kind)
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left


def test_an_image_already_on_disk_is_reused_and_partials_or_broken_files_are_not(
    server, tmp_path: Path
) -> None:
    (tmp_path / "p2.png.part-1-2").write_bytes(image_bytes("PNG"))
    (tmp_path / "p2.jpg").write_bytes(b"broken")
    assert find_existing_image(tmp_path, "p2") is None
    (tmp_path / "p2.png").write_bytes(image_bytes("PNG"))
    assert find_existing_image(tmp_path, "p2") == tmp_path / "p2.png"
    assert fetch_one(server.base + "/never-asked", "p2", tmp_path, OPTIONS) == ("ok", "p2.png", False)
    assert server.requests["/never-asked"] == 0
    assert remove_stale_partials(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p2.jpg", "p2.png"]


def test_fetch_many_returns_one_result_per_job_in_job_order(server, tmp_path: Path) -> None:
    server.routes["/one"] = (200, image_bytes("PNG"), True)
    server.routes["/gone"] = (410, b"", True)
    jobs = [(5, server.base + "/gone", "x"), (2, server.base + "/one", "y")]
    results = fetch_many(
        jobs, str(tmp_path), FetchOptions(threads_per_task=0, retries=0, allow_private_addresses=True)
    )
    assert results == [(5, "http_error: HTTP 410", None, False), (2, "ok", "y.png", True)]


def test_file_stems_keep_only_safe_characters_and_at_most_120_of_them() -> None:
    assert safe_file_stem(12) == "12"
    assert safe_file_stem("../a b/c") == "a_b_c"
    assert safe_file_stem("x" * 130) == "x" * 120
    with pytest.raises(DataError, match="expected letters or digits"):
        safe_file_stem("../..")


def test_a_catalog_fetch_without_ray_counts_new_and_reused_images(server, tmp_path: Path) -> None:
    server.routes["/cat-a"] = (200, image_bytes("PNG"), True)
    server.routes["/cat-b"] = (404, b"", True)
    columns = {
        "website_name": "w", "competence_date": "d", "country_code": "US", "currency_code": "USD",
        "brand": "B", "category1_code": "c1", "category2_code": "c2", "category3_code": "BAGS",
        "full_price": 10.0, "price": 10.0, "full_price_eur": 9.0, "price_eur": 9.0, "flg_discount": 0,
    }  # fmt: skip
    catalog = pd.DataFrame(
        [
            {
                **columns,
                "product_code": 1.0,
                "title": "A",
                "itemurl": "u",
                "imageurl": server.base + "/cat-a",
            },
            {
                **columns,
                "product_code": 2.0,
                "title": "B",
                "itemurl": "u",
                "imageurl": server.base + "/cat-b",
            },
            {
                **columns,
                "product_code": 2.5,
                "title": "C",
                "itemurl": "u",
                "imageurl": server.base + "/cat-a",
            },
        ]
    )
    options = FetchOptions(retries=0, allow_private_addresses=True)
    first = fetch_catalog(catalog, tmp_path, options, use_ray=False, show_progress=False)
    assert (first.total, first.downloaded, first.reused) == (3, 1, 0)
    assert first.by_outcome == {"ok": 1, "http_error": 1, "bad_product_code": 1}
    manifest = pd.read_parquet(tmp_path / "manifest.parquet")
    assert manifest["local_image_path"].fillna("-").tolist() == ["images/1.png", "-", "-"]
    again = fetch_catalog(catalog, tmp_path, options, use_ray=False, show_progress=False)
    assert (again.downloaded, again.reused) == (0, 1)


def test_summary_lines_list_outcomes_most_frequent_first() -> None:
    summary = FetchSummary(
        Path("m.parquet"), 6, {"http_error": 1, "ok": 4, "timeout": 1}, downloaded=3, reused=1
    )
    lines = summary.lines()
    assert lines[0] == "6 rows -> m.parquet"
    assert lines[1].split() == ["ok", "4"]
    assert lines[-1] == "new downloads 3, already on disk 1"


# --- the address guard (SSRF): refused by default, allowed only when asked -----------------------------------------


@pytest.mark.parametrize(
    ("address", "label"),
    [
        ("169.254.169.254", "link-local"),  # the cloud instance-metadata service
        ("fe80::1", "link-local"),
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped IPv6 reaches the same host
        ("10.1.2.3", "private"),
        ("172.16.0.9", "private"),
        ("192.168.1.1", "private"),
        ("fd00::5", "private"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("ff02::1", "multicast"),
        ("100.100.100.200", "not public"),  # shared address space (one cloud's metadata service lives here)
        ("93.184.216.34", None),
        ("2606:4700:4700::1111", None),
    ],
)
def test_addresses_that_are_not_public_are_named_by_what_they_are(address: str, label: str | None) -> None:
    assert address_class(address) == label


def test_by_default_a_loopback_url_is_refused_before_any_request(server, tmp_path: Path) -> None:
    server.routes["/guarded"] = (200, image_bytes("PNG"), True)
    status, name, new = fetch_one(server.base + "/guarded", "g", tmp_path, FetchOptions(retries=0))
    assert status.startswith("blocked_address: 127.0.0.1 resolves to 127.0.0.1 (loopback); ")
    assert "--allow-private-addresses" in status and (name, new) == (None, False)
    assert server.requests["/guarded"] == 0 and not list(tmp_path.iterdir())
    allowed = FetchOptions(retries=0, allow_private_addresses=True)
    assert fetch_one(server.base + "/guarded", "g", tmp_path, allowed) == ("ok", "g.png", True)


def test_a_redirect_to_loopback_is_refused_before_it_is_followed(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first host passes as public (its name is made to resolve to a public address, and the connection check
    is switched off for it); its redirect to `localhost` is then resolved for real and refused unrequested."""
    port = server.base.rsplit(":", 1)[1]
    server.routes["/bounce"] = (302, f"http://localhost:{port}/secret".encode(), True)
    server.routes["/secret"] = (200, image_bytes("PNG"), True)
    real_resolve = url_guard.resolve
    monkeypatch.setattr(
        url_guard,
        "resolve",
        lambda host, p: ["93.184.216.34"] if host == "127.0.0.1" else real_resolve(host, p),
    )
    monkeypatch.setattr(download, "_peer_address", lambda response: None)
    status, name, _ = fetch_one(server.base + "/bounce", "r", tmp_path, FetchOptions(retries=0))
    assert status.startswith("blocked_address: localhost resolves to ")
    assert "(loopback) (reached by a redirect)" in status and name is None
    assert server.requests["/bounce"] == 1 and server.requests["/secret"] == 0


def test_a_name_that_resolves_public_but_connects_to_loopback_is_refused(
    server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the check's lookup says public, the connection lands on loopback; the body is never kept."""
    server.routes["/rebound"] = (200, image_bytes("PNG"), True)
    monkeypatch.setattr(url_guard, "resolve", lambda host, port: ["93.184.216.34"])
    status, name, _ = fetch_one(server.base + "/rebound", "d", tmp_path, FetchOptions(retries=0))
    assert status.startswith("blocked_address: 127.0.0.1 resolves to 127.0.0.1 (loopback)") and name is None
    assert not list(tmp_path.iterdir())


def test_redirects_are_followed_up_to_the_limit(server, tmp_path: Path) -> None:
    server.routes["/hop"] = (302, b"/hop2", True)  # relative Location, resolved against the current URL
    server.routes["/hop2"] = (301, b"/final", True)
    server.routes["/final"] = (200, image_bytes("PNG"), True)
    server.routes["/loop"] = (307, b"/loop", True)
    options = FetchOptions(retries=0, max_redirects=2, allow_private_addresses=True)
    assert fetch_one(server.base + "/hop", "h", tmp_path, options) == ("ok", "h.png", True)
    assert fetch_one(server.base + "/loop", "l", tmp_path, options) == (
        "too_many_redirects: more than 2",
        None,
        False,
    )
    assert server.requests["/loop"] == 3


def test_a_catalog_of_loopback_urls_is_all_blocked_by_default_with_the_reason_per_row(
    server, tmp_path: Path
) -> None:
    server.routes["/cat-a"] = (200, image_bytes("PNG"), True)
    rows = {
        "website_name": "w", "competence_date": "d", "country_code": "US", "currency_code": "USD",
        "brand": "B", "category1_code": "c1", "category2_code": "c2", "category3_code": "BAGS",
        "full_price": 10.0, "price": 10.0, "full_price_eur": 9.0, "price_eur": 9.0, "flg_discount": 0,
        "title": "A", "itemurl": "u", "imageurl": server.base + "/cat-a",
    }  # fmt: skip
    catalog = pd.DataFrame([{**rows, "product_code": code} for code in (1, 2)])
    before = server.requests["/cat-a"]
    summary = fetch_catalog(catalog, tmp_path, FetchOptions(retries=0), use_ray=False, show_progress=False)
    assert summary.by_outcome == {"blocked_address": 2} and summary.downloaded == 0
    manifest = pd.read_parquet(tmp_path / "manifest.parquet")
    assert all("(loopback)" in status for status in manifest["status"])
    assert manifest["local_image_path"].isna().all() and server.requests["/cat-a"] == before


def test_the_cli_flag_turns_the_guard_off() -> None:
    import argparse

    from phi3v_ray.commands import data_fetch

    parser = argparse.ArgumentParser()
    data_fetch.add_arguments(parser)
    assert not parser.parse_args(["--source", "a.csv", "--out", "o"]).allow_private_addresses
    assert parser.parse_args(
        ["--source", "a.csv", "--out", "o", "--allow-private-addresses"]
    ).allow_private_addresses
