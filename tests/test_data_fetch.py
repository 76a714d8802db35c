"""Fetch against a real HTTP server on loopback: every failure mode ends as the right status, nothing is lost."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from phi3v_ray.data.fetch import FetchOptions, fetch_catalog, safe_file_stem
from phi3v_ray.data.schema import BURBERRY_COLUMNS, STATUS_OK, status_kind
from phi3v_ray.errors import DataError

REPO_ROOT = Path(__file__).resolve().parents[1]


def image_bytes(image_format: str, size: tuple[int, int] = (64, 80), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, (200, 30, 40, 255)[: len(mode)]).save(buffer, format=image_format)
    return buffer.getvalue()


# A stalled request is held this long at most (or until its server closes): far beyond any client timeout used here,
# so a stalled request can never succeed however slow the machine is.
STALL_S = 600.0


class CatalogServer:
    """A loopback HTTP server with one behaviour per path, counting requests per path.

    `answer_first=N` answers only the first N requests and stalls every later one until the server closes (a run
    frozen mid-way, deterministically, however fast or slow the machine is)."""

    def __init__(self, answer_first: int | None = None) -> None:
        self.routes: dict[str, tuple[str, bytes]] = {}
        self.requests: Counter[str] = Counter()
        self.answered = 0
        self.answer_first = answer_first
        self.closing = threading.Event()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                with server.lock:
                    server.requests[self.path] += 1
                    count = server.requests[self.path]
                    held = server.answer_first is not None and server.answered >= server.answer_first
                    server.answered += not held
                if held:
                    server.closing.wait(STALL_S)
                    return
                kind, body = server.routes.get(self.path, ("missing", b""))
                if kind == "image":
                    self.reply(200, body, "image/jpeg")
                elif kind == "flaky" and count == 1:
                    self.reply(500, b"try again", "text/plain")
                elif kind == "flaky":
                    self.reply(200, body, "image/jpeg")
                elif kind == "error":
                    self.reply(503, b"down", "text/plain")
                elif kind == "slow":  # no answer at all
                    server.closing.wait(STALL_S)
                elif kind == "stall_body":  # headers and part of the body, then nothing
                    self.send_response(200)
                    self.send_header("Content-Type", "image/jpeg")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        self.wfile.write(body[: len(body) // 2])
                        self.wfile.flush()
                    server.closing.wait(STALL_S)
                elif kind == "html":
                    self.reply(200, b"<!DOCTYPE html><html><body>Not found</body></html>", "text/html")
                elif kind == "redirect":
                    self.send_response(302)
                    self.send_header("Location", body.decode())
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self.reply(404, b"no such image", "text/plain")

            def reply(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.closing.set()  # release every stalled request
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[CatalogServer]:
    running = CatalogServer()
    yield running
    running.close()


def catalog_rows(specs: list[tuple[int, str, object, str]]) -> pd.DataFrame:
    """Catalog rows (product_code, imageurl, full_price, title) with the other columns filled in plausibly."""
    rows = []
    for code, url, price, title in specs:
        rows.append({
            "website_name": "BURBERRY", "competence_date": "2023-11-17", "country_code": "USA",
            "currency_code": "USD", "brand": "BURBERRY", "category1_code": "WOMAN", "category2_code": "BAGS",
            "category3_code": "TOTE BAGS", "product_code": code, "title": title, "itemurl": "https://x/y",
            "imageurl": url, "full_price": price, "price": price, "full_price_eur": price, "price_eur": price,
            "flg_discount": 0,
        })  # fmt: skip
    return pd.DataFrame(rows, columns=list(BURBERRY_COLUMNS))


# Timeouts: a healthy loopback answer takes milliseconds, but on a loaded 2-core machine a thread can wait seconds for
# the CPU; 3 s leaves that margin, while a stalled route never answers (STALL_S), so neither outcome depends on
# speed. Each stalled row costs 3 attempts x 3 s; stalled rows share a task's thread pool and overlap.
OPTIONS = FetchOptions(
    connect_timeout_s=5.0, read_timeout_s=3.0, retries=2, backoff_s=0.05, max_bytes=150_000,
    threads_per_task=4, rows_per_task=4, allow_private_addresses=True,  # the catalog server is on loopback
)  # fmt: skip


def test_every_failure_mode_gets_its_status_and_rerun_fetches_nothing(
    ray_local: object, server: CatalogServer, tmp_path: Path
) -> None:
    jpeg = image_bytes("JPEG")
    server.routes.update({
        "/jpeg": ("image", jpeg),
        "/png": ("image", image_bytes("PNG", mode="RGBA")),
        "/webp": ("image", image_bytes("WEBP")),
        "/flaky": ("flaky", jpeg),
        "/down": ("error", b""),
        "/slow": ("slow", jpeg),
        "/stall": ("stall_body", image_bytes("JPEG", size=(300, 300))),
        "/truncated": ("image", image_bytes("JPEG", size=(400, 400))[:900]),
        "/html": ("html", b""),
        "/huge": ("image", image_bytes("BMP", size=(300, 300))),  # 270 kB > max_bytes
        "/moved": ("redirect", f"{server.base}/jpeg".encode()),
    })  # fmt: skip
    expected = {
        1: ("/jpeg", "ok"), 2: ("/png", "ok"), 3: ("/webp", "ok"), 4: ("/gone", "http_error"),
        5: ("/flaky", "ok"), 6: ("/down", "http_error"), 7: ("/slow", "timeout"),
        8: ("/truncated", "truncated_image"), 9: ("/html", "not_an_image"), 10: ("/huge", "too_large"),
        11: ("/moved", "ok"), 12: ("/stall", "timeout"),
    }  # fmt: skip
    specs = [(code, server.base + path, 100.0, f"Product {code}") for code, (path, _) in expected.items()]
    specs += [
        (20, "", 100.0, "No URL"),
        (21, "htt", 100.0, "Broken URL"),
        (22, server.base + "/jpeg", "abc", "Text price"),
        (23, server.base + "/jpeg", float("nan"), "NaN price"),
        (24, server.base + "/jpeg", 100.0, "  "),
        (1, server.base + "/png", 100.0, "Duplicate code"),
        ("../../etc/passwd", server.base + "/jpeg", 100.0, "Traversal"),
    ]
    table = catalog_rows(specs)
    summary = fetch_catalog(table, tmp_path, OPTIONS, show_progress=False)
    manifest = pd.read_parquet(tmp_path / "manifest.parquet")

    assert len(manifest) == len(table) == summary.total
    assert manifest["title"].tolist() == table["title"].tolist()  # input order, input columns kept
    kinds = [status_kind(s) for s in manifest["status"]]
    assert kinds == [kind for _, kind in expected.values()] + [
        "missing_url", "bad_url", "bad_price", "bad_price", "empty_title", "duplicate_product_code",
        "bad_product_code",
    ]  # fmt: skip
    status = dict(zip(manifest["title"], manifest["status"], strict=True))
    assert "HTTP 404" in status["Product 4"] and "HTTP 503 (after 3 attempts)" in status["Product 6"]
    assert "'abc'" in status["Text price"] and "row 0" in status["Duplicate code"]
    # No answer, and an answer that stops mid-body, are both timeouts (retried), never a connection error.
    assert status["Product 7"] == "timeout: no answer within 3s (after 3 attempts)"
    assert status["Product 12"] == "timeout: no data within 3s (after 3 attempts)"
    assert server.requests["/gone"] == 1 and server.requests["/down"] == 3 and server.requests["/flaky"] == 2
    assert server.requests["/slow"] == 3 and server.requests["/stall"] == 3
    ok = manifest[manifest["status"] == STATUS_OK]
    assert sum(summary.by_outcome.values()) == len(table) and summary.by_outcome["ok"] == len(ok) == 5
    assert summary.downloaded == 5 and summary.reused == 0
    assert manifest.loc[manifest["status"] != STATUS_OK, "local_image_path"].isna().all()
    assert sorted(ok["local_image_path"]) == ["images/1.jpg", "images/11.jpg", "images/2.png", "images/3.webp",
                                              "images/5.jpg"]  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(
        Path(p).name for p in ok["local_image_path"]
    )
    for path in ok["local_image_path"]:
        Image.open(tmp_path / path).load()

    before = server.requests.copy()
    again = fetch_catalog(table, tmp_path, OPTIONS, show_progress=False)
    ok_paths = ["/jpeg", "/png", "/webp", "/flaky", "/moved"]
    assert again.downloaded == 0 and again.reused == 5
    assert all(server.requests[path] == before[path] for path in ok_paths)
    assert pd.read_parquet(tmp_path / "manifest.parquet")["status"].tolist() == manifest["status"].tolist()


def test_missing_columns_are_all_named_in_one_error(tmp_path: Path) -> None:
    csv = tmp_path / "catalog.csv"
    catalog_rows([(1, "http://a/b", 1.0, "x")]).drop(columns=["title", "full_price"]).to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"catalog.csv: missing column\(s\) title, full_price"):
        fetch_catalog(str(csv), tmp_path / "out", OPTIONS, use_ray=False, show_progress=False)


def test_csv_source_reads_and_missing_file_is_a_clear_error(server: CatalogServer, tmp_path: Path) -> None:
    server.routes["/jpeg"] = ("image", image_bytes("JPEG"))
    csv = tmp_path / "catalog.csv"
    catalog_rows([(7, server.base + "/jpeg", 10.0, "A"), (8, server.base + "/none", 10.0, "B")]).to_csv(
        csv, index=False
    )
    summary = fetch_catalog(str(csv), tmp_path / "out", OPTIONS, use_ray=False, show_progress=False)
    assert summary.by_outcome == {"ok": 1, "http_error": 1}
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    assert manifest["product_code"].tolist() == [7, 8] and manifest["full_price"].tolist() == [10.0, 10.0]
    with pytest.raises(DataError, match="no such file"):
        fetch_catalog(str(tmp_path / "nope.parquet"), tmp_path / "out", OPTIONS, show_progress=False)


def test_safe_file_stem_cannot_escape_the_images_dir() -> None:
    assert safe_file_stem(40123456) == "40123456"
    assert "/" not in safe_file_stem("../../etc/passwd") and not safe_file_stem("../x").startswith(".")
    with pytest.raises(DataError, match="expected letters or digits"):
        safe_file_stem("../..")


# The killed run's own timeouts are far longer than the test: its stalled requests can only end by the kill.
KILLED_RUN = """
import sys, ray
from phi3v_ray.data.fetch import FetchOptions, fetch_catalog
import pandas as pd
ray.init(address=sys.argv[1], log_to_driver=False)
fetch_catalog(pd.read_parquet(sys.argv[2]), sys.argv[3],
              FetchOptions(read_timeout_s=3600, threads_per_task=2, rows_per_task=4, task_cpus=0.5,
                           allow_private_addresses=True),
              show_progress=False)
"""
ANSWERED_BEFORE_KILL = 8


def test_killed_run_resumes_without_refetching_what_it_finished(ray_local, tmp_path: Path) -> None:
    """A run frozen after exactly 8 answers is killed; the rerun reuses those 8 and downloads the other 32.

    The first server answers 8 requests and stalls all later ones, so how far the killed run got does not depend on
    how fast the machine is, and nothing the dead run's tasks still hold can land a file later. The rerun reads the
    same rows from a second server (image files are keyed by product code, not URL), so its requests are counted
    apart from anything the dead run still has in flight."""
    frozen, fresh = CatalogServer(answer_first=ANSWERED_BEFORE_KILL), CatalogServer()
    try:
        jpeg = image_bytes("JPEG")
        for index in range(40):
            frozen.routes[f"/img/{index}"] = fresh.routes[f"/img/{index}"] = ("image", jpeg)
        codes = [100 + i for i in range(40)]
        catalog_rows(
            [(code, f"{frozen.base}/img/{i}", 5.0, f"T{i}") for i, code in enumerate(codes)]
        ).to_parquet(tmp_path / "input.parquet")
        images = tmp_path / "out" / "images"
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        child = subprocess.Popen(
            [sys.executable, "-c", KILLED_RUN, ray_local.get_runtime_context().gcs_address,
             str(tmp_path / "input.parquet"), str(tmp_path / "out")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 300  # generous: Ray workers start slowly on a loaded machine
            while not images.is_dir() or len(list(images.glob("*.jpg"))) < ANSWERED_BEFORE_KILL:
                assert child.poll() is None, "the run finished or crashed before it could be killed"
                assert time.monotonic() < deadline, (
                    f"{frozen.answered} answered, but images: {list(images.glob('*'))}"
                )
                time.sleep(0.1)
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait()
        assert not (tmp_path / "out" / "manifest.parquet").exists()
        finished = {p.name for p in images.glob("*.jpg")}
        assert len(finished) == frozen.answered == ANSWERED_BEFORE_KILL

        rerun = catalog_rows([(code, f"{fresh.base}/img/{i}", 5.0, f"T{i}") for i, code in enumerate(codes)])
        summary = fetch_catalog(rerun, tmp_path / "out", OPTIONS, show_progress=False)
        assert summary.by_outcome == {"ok": 40}
        assert summary.reused == ANSWERED_BEFORE_KILL and summary.downloaded == 40 - ANSWERED_BEFORE_KILL
        refetched = {int(path.rsplit("/", 1)[1]) for path in fresh.requests}
        assert (
            sum(fresh.requests.values()) == summary.downloaded
        )  # one request per missing image, none repeated
        assert not {f"{codes[i]}.jpg" for i in refetched} & finished  # nothing finished was fetched again
        assert not list(images.glob("*.part-*"))
    finally:
        frozen.close()
        fresh.close()
