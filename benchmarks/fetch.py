"""Fetch throughput vs a one-at-a-time baseline, and sample-generator speed, measured in the same run.

Serves synthetic product images from a loopback HTTP server that waits a fixed latency per request (standing in for
a CDN's round trip), then downloads them (1) sequentially, one request after another, like the reference
walkthrough, and (2) with `fetch_catalog` on Ray (thread pools inside Ray tasks). Prints images/s and the ratio.

    python benchmarks/fetch.py [--images 240] [--latency-ms 50] [--synth-rows 3040]
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd


def start_server(files: dict[str, bytes], latency_s: float) -> ThreadingHTTPServer:
    """A loopback server answering GET /<guid> with the file bytes after `latency_s`."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            time.sleep(latency_s)
            body = files.get(self.path.rsplit("/", 1)[-1])
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.request_queue_size = 256
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=240, help="images to fetch (default 240)")
    parser.add_argument(
        "--latency-ms", type=float, default=50.0, help="server latency per request (default 50)"
    )
    parser.add_argument(
        "--synth-rows", type=int, default=3040, help="rows for the generator timing (default 3040)"
    )
    args = parser.parse_args()

    import ray

    from phi3v_ray.data.fetch import FetchOptions, fetch_catalog, fetch_one
    from phi3v_ray.data.synth import synth_catalog

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        start = time.perf_counter()
        synth_catalog(root / "synth", args.synth_rows, seed=0)
        synth_s = time.perf_counter() - start
        print(f"synth: {args.synth_rows} rows in {synth_s:.1f} s = {args.synth_rows / synth_s:.0f} rows/s")

        catalog = pd.read_parquet(root / "synth" / "catalog.parquet").dropna(subset=["local_image_path"])
        catalog = catalog.head(args.images).reset_index(drop=True)
        files = {
            url.rsplit("/", 1)[-1]: (root / "synth" / path).read_bytes()
            for url, path in zip(catalog["imageurl"], catalog["local_image_path"], strict=True)
        }
        server = start_server(files, args.latency_ms / 1000)
        base = f"http://127.0.0.1:{server.server_address[1]}/is/image/"
        catalog["imageurl"] = [base + url.rsplit("/", 1)[-1] for url in catalog["imageurl"]]
        # the benchmark server is on loopback, which the SSRF guard refuses unless allowed
        options = FetchOptions(threads_per_task=16, rows_per_task=32, allow_private_addresses=True)

        baseline_dir = root / "sequential" / "images"
        baseline_dir.mkdir(parents=True)
        start = time.perf_counter()
        for url, code in zip(catalog["imageurl"], catalog["product_code"], strict=True):
            status, _, _ = fetch_one(url, str(code), baseline_dir, options)
            assert status == "ok", status
        sequential_s = time.perf_counter() - start

        ray.init(num_cpus=4, log_to_driver=False, include_dashboard=False)
        fetch_catalog(catalog.head(8), root / "warmup", options, show_progress=False)  # worker start-up
        start = time.perf_counter()
        summary = fetch_catalog(catalog, root / "parallel", options, show_progress=False)
        parallel_s = time.perf_counter() - start
        assert summary.by_outcome == {"ok": len(catalog)}, summary.by_outcome
        server.shutdown()

    n = len(catalog)
    print(f"fetch, {n} images, {args.latency_ms:g} ms server latency per request:")
    print(f"  {'sequential (one at a time)':<32} {n / sequential_s:8.1f} img/s  ({sequential_s:.1f} s)")
    print(f"  {'fetch_catalog on Ray':<32} {n / parallel_s:8.1f} img/s  ({parallel_s:.1f} s)")
    print(f"  ratio {sequential_s / parallel_s:.1f}x")


if __name__ == "__main__":
    main()
