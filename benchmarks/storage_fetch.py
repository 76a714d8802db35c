"""`data fetch` writing into a bucket on a loopback S3 server vs writing to local disk, as a ratio, in the same run.

Serves --rows generated product images from a loopback HTTP server that waits --latency-ms per request (a CDN's
round trip; 0 leaves nothing to hide the storage writes behind), then runs `fetch_catalog` on a local Ray cluster
into a fresh local folder and into a fresh prefix of a bucket on moto's S3 server (its own process on loopback; see
s3_loopback.py), alternating which goes first each round. Loopback addresses are allowed explicitly
(allow_private_addresses), as in the tests. Prints images/s of each and the ratio, then reruns both fetches to show
how long a resume takes when everything is already there (it lists and verifies what is held, fetching nothing).

    python benchmarks/storage_fetch.py [--rows 960] [--latency-ms 0] [--rounds 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fetch import start_server  # noqa: E402
from s3_loopback import loopback_s3, median, quiet_ray_data  # noqa: E402


def served_catalog(root: Path, rows: int, latency_ms: float):
    """A generated catalog whose image URLs point at a loopback server holding its images; (catalog, server)."""
    import pandas as pd

    from phi3v_ray.data.synth import synth_catalog

    synth_catalog(root, rows, seed=0, broken_url_share=0.0)
    catalog = (
        pd.read_parquet(root / "catalog.parquet").dropna(subset=["local_image_path"]).reset_index(drop=True)
    )
    files = {
        url.rsplit("/", 1)[-1]: (root / path).read_bytes()
        for url, path in zip(catalog["imageurl"], catalog["local_image_path"], strict=True)
    }
    server = start_server(files, latency_ms / 1000)
    base = f"http://127.0.0.1:{server.server_address[1]}/is/image/"
    catalog["imageurl"] = [base + url.rsplit("/", 1)[-1] for url in catalog["imageurl"]]
    return catalog, server


def timed_fetch(catalog, out: str, options) -> float:
    """Seconds for one fetch of the whole catalog into `out`; every row must end ok."""
    from phi3v_ray.data.fetch import fetch_catalog

    started = time.perf_counter()
    summary = fetch_catalog(catalog, out, options, show_progress=False)
    elapsed = time.perf_counter() - started
    if summary.by_outcome != {"ok": len(catalog)}:
        raise RuntimeError(f"fetch into {out}: {summary.by_outcome}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=960, help="images to fetch (default 960)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="HTTP latency per request (default 0)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating local/S3 rounds (median shown)")
    parser.add_argument("--cpus", type=int, default=4, help="CPUs of the local Ray cluster (default 4)")
    args = parser.parse_args()

    from phi3v_ray.data.fetch import FetchOptions
    from phi3v_ray.storage import location

    options = FetchOptions(threads_per_task=16, rows_per_task=32, allow_private_addresses=True)
    with tempfile.TemporaryDirectory() as scratch, loopback_s3() as bucket:
        import ray

        root = Path(scratch)
        catalog, server = served_catalog(root / "synth", args.rows, args.latency_ms)
        ray.init(num_cpus=args.cpus, log_to_driver=False, include_dashboard=False)
        quiet_ray_data()
        for out in (str(root / "warm"), f"{bucket}/warm"):  # worker start-up, imports, S3 client
            timed_fetch(catalog.head(8), out, options)

        seconds: dict[str, list[float]] = {"local": [], "s3": []}
        for round_index in range(args.rounds):
            targets = {"local": str(root / f"out-{round_index}"), "s3": f"{bucket}/out-{round_index}"}
            for mode in ["local", "s3"] if round_index % 2 == 0 else ["s3", "local"]:
                seconds[mode].append(timed_fetch(catalog, targets[mode], options))
                print(
                    f"round {round_index + 1}/{args.rounds} {mode:>5}: {seconds[mode][-1]:.1f} s", flush=True
                )

        images = sum(1 for _ in location(f"{bucket}/out-0/images").files())
        rerun_s = {"local": timed_fetch(catalog, str(root / "out-0"), options)}
        rerun_s["s3"] = timed_fetch(catalog, f"{bucket}/out-0", options)
        server.shutdown()
        ray.shutdown()

    n = len(catalog)
    local_rate, s3_rate = n / median(seconds["local"]), n / median(seconds["s3"])
    rounds = ", ".join(f"{loc / s:.2f}" for loc, s in zip(seconds["local"], seconds["s3"], strict=True))
    print(
        f"\ndata fetch, {n} images, {args.latency_ms:g} ms HTTP latency per request, {args.cpus} Ray CPUs, "
        f"{args.rounds} round(s), median:"
    )
    print(f"  {'local disk':<28}{local_rate:8.1f} img/s")
    print(f"  {'bucket (loopback S3)':<28}{s3_rate:8.1f} img/s   ({images} objects under out-0/images)")
    print(f"  ratio S3 / local {s3_rate / local_rate:.2f}x   (rounds: {rounds})")
    print(
        f"  rerun (resume: everything already there, verified): local {rerun_s['local']:.1f} s, "
        f"bucket {rerun_s['s3']:.1f} s"
    )


if __name__ == "__main__":
    main()
