"""`data prepare` reading images from a loopback S3 server vs from local disk, as a ratio, in the same run.

One generated catalog (--rows products, default 3,040 like the Burberry catalog, with its mix of photo sizes) is
split with every product in `train`, kept on local disk and copied into a bucket on moto's S3 server (its own
process on loopback; see s3_loopback.py). Official Phi-3-Vision geometry (336-px crops, --num-crops 16), a local
Ray cluster of --cores CPUs. Two measurements per round, local and S3 alternating which goes first:

  end to end:    `write_prepared_split` (what `phi3v-ray data prepare` runs for a split): read the splits table,
                 fingerprint the images, start the actor pool, decode/resize/tokenize, write the prepared parquet
                 and commit the entry. Local catalog -> local prepared dir; bucket catalog -> prepared dir in the
                 bucket. Rate = products / wall time, start-up included.
  steady state:  the same split streamed through the pipeline with no cache entry (`build_prepared_dataset`),
                 every example delivered to this process; rate between the arrival of 25% and 95% of the rows.

Then the bucket run is repeated once to show that a rerun prepares nothing (it reuses the committed entry).
A warm-up prepare of a small catalog in each mode runs first (worker processes, imports, S3 client).

Moto answers every GET and PUT in Python on this machine, which a real S3 endpoint never does. The S3 rows report
the CPU seconds the server used; `--isolate-server` pins the server to the last core and Ray (both modes) to the
others, so the ratio compares what the client side costs with the server's CPU kept apart.

    python benchmarks/storage_prepare.py [--rows 3040] [--rounds 1] [--cores 2] [--no-steady] [--isolate-server]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from s3_loopback import loopback_s3, median, quiet_ray_data, server_cpu_seconds, upload_dir  # noqa: E402


def make_catalog(root: Path, rows: int, seed: int) -> Path:
    """A generated catalog with every product in the train split (no broken URLs: all rows are preparable)."""
    from phi3v_ray.data.split import split_catalog
    from phi3v_ray.data.synth import synth_catalog

    synth_catalog(root, rows, seed=seed, broken_url_share=0.0)
    split_catalog(root, by="title", ratios=(1.0, 0.0, 0.0))
    return root


def experiment(catalog: str, prepared_dir: str, num_crops: int):
    """The experiment `data prepare` would read: official geometry, this catalog and cache location."""
    from phi3v_ray.config import config_from_dict

    return config_from_dict(
        {
            "model": {"preset": "official", "num_crops": num_crops},
            "data": {"catalog_dir": catalog, "prepared_dir": prepared_dir, "ratios": [1.0, 0.0, 0.0]},
        },
        source="<benchmark>",
    )


def end_to_end(config, rows: int) -> tuple[float, bool]:
    """(products/s including start-up, reused) of one `data prepare` of the train split."""
    from phi3v_ray.data.datasets import write_prepared_split

    started = time.perf_counter()
    _, summary, reused = write_prepared_split(config, "train", prompt_only=False)
    elapsed = time.perf_counter() - started
    if not reused and (summary.prepared != rows or not summary.reconciles):
        raise RuntimeError(f"prepare did not prepare every row: {summary}")
    return rows / elapsed, reused


def window_rate(arrivals: list[tuple[float, int]], low: float = 0.25, high: float = 0.95) -> float:
    """Examples/s between the moments `low` and `high` of all examples had arrived (start-up excluded)."""
    total = arrivals[-1][1]
    first = next(point for point in arrivals if point[1] >= low * total)
    last = next(point for point in arrivals if point[1] >= high * total)
    return (last[1] - first[1]) / (last[0] - first[0]) if last[0] > first[0] else float("nan")


def steady(config, rows: int) -> float:
    """Products/s of the streaming pipeline between 25% and 95% of the rows."""
    from phi3v_ray.data.datasets import build_prepared_dataset

    dataset, _ = build_prepared_dataset(config, "train", prompt_only=False)
    count, arrivals = 0, []
    for batch in dataset.iter_batches(batch_size=8, batch_format="numpy"):
        count += len(batch["row_id"])
        arrivals.append((time.perf_counter(), count))
    if count != rows:
        raise RuntimeError(f"streamed {count} examples, expected {rows}")
    return window_rate(arrivals)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=3040, help="generated products (default 3040)")
    parser.add_argument("--rounds", type=int, default=1, help="alternating local/S3 rounds (median shown)")
    parser.add_argument("--cores", type=int, default=2, help="CPUs of the local Ray cluster (default 2)")
    parser.add_argument("--num-crops", type=int, default=16, help="HD crop budget (default 16, Phi-3-Vision)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-steady", action="store_true", help="skip the steady-state measurement")
    parser.add_argument(
        "--isolate-server",
        action="store_true",
        help="pin the S3 server to the last core and the driver and Ray to the rest (same --cores Ray CPUs)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    work = Path(tempfile.mkdtemp(prefix="phi3v-storage-prepare-"))
    server_cpus, ray_cpus = None, args.cores
    if args.isolate_server:
        cores = sorted(os.sched_getaffinity(0))
        server_cpus = {cores[-1]}
        os.sched_setaffinity(0, set(cores[:-1]))  # Ray's processes inherit this from the driver
        # Ray keeps --cores logical CPUs (slots for the read tasks beside the actor pool) on fewer physical cores.
        print(f"S3 server on core {cores[-1]}; driver and Ray on cores {cores[:-1]} ({ray_cpus} Ray CPUs)")
    with loopback_s3(server_cpus) as bucket:
        import ray

        print(f"generating {args.rows} products in {work} ...", flush=True)
        catalogs = {"local": str(make_catalog(work / "catalog", args.rows, args.seed))}
        objects = upload_dir(work / "catalog", f"{bucket}/catalog")
        catalogs["s3"] = f"{bucket}/catalog"
        warm = make_catalog(work / "warm", 16, args.seed + 1)
        upload_dir(warm, f"{bucket}/warm")
        print(f"copied the catalog to {catalogs['s3']} ({objects} objects)", flush=True)

        ray.init(num_cpus=args.cores, include_dashboard=False, log_to_driver=False)
        quiet_ray_data()
        prepared_at = {"local": str(work / "prepared"), "s3": f"{bucket}/prepared"}
        for mode, warm_catalog in (("local", str(warm)), ("s3", f"{bucket}/warm")):
            end_to_end(experiment(warm_catalog, f"{prepared_at[mode]}-warm", args.num_crops), 16)

        results: dict[str, dict[str, list[float]]] = {m: {"e2e": [], "steady": []} for m in catalogs}
        server_load: list[str] = []
        for round_index in range(args.rounds):
            order = ["local", "s3"] if round_index % 2 == 0 else ["s3", "local"]
            for mode in order:
                config = experiment(catalogs[mode], f"{prepared_at[mode]}-{round_index}", args.num_crops)
                cpu_before, wall_before = server_cpu_seconds(), time.perf_counter()
                rate, _ = end_to_end(config, args.rows)
                if mode == "s3":
                    busy = server_cpu_seconds() - cpu_before
                    wall = time.perf_counter() - wall_before
                    server_load.append(f"{busy:.1f} CPU-s in {wall:.1f} s ({busy / wall:.2f} cores)")
                results[mode]["e2e"].append(rate)
                line = f"round {round_index + 1}/{args.rounds} {mode:>5}: end to end {rate:6.2f} products/s"
                if not args.no_steady:
                    stream = experiment(
                        catalogs[mode], f"{prepared_at[mode]}-stream-{round_index}", args.num_crops
                    )
                    results[mode]["steady"].append(steady(stream, args.rows))
                    line += f", steady {results[mode]['steady'][-1]:6.2f} products/s"
                print(line, flush=True)

        rerun_config = experiment(catalogs["s3"], f"{prepared_at['s3']}-0", args.num_crops)
        started = time.perf_counter()
        _, reused = end_to_end(rerun_config, args.rows)
        rerun_s = time.perf_counter() - started
        ray.shutdown()
    report(args, results, reused, rerun_s)
    print(f"  S3 server while preparing from the bucket (end to end): {'; '.join(server_load)}")


def report(
    args: argparse.Namespace, results: dict[str, dict[str, list[float]]], reused: bool, rerun_s: float
) -> None:
    """The side-by-side table: medians per mode and the S3/local ratio per measurement (and per round)."""
    print(
        f"\ndata prepare, {args.rows} generated products (train split), num_crops {args.num_crops}, "
        f"{args.cores} Ray CPUs, {args.rounds} round(s), median:"
    )
    print(f"  {'':<26}{'local disk':>14}{'loopback S3':>14}{'S3 / local':>12}")
    for key, label in (("e2e", "end to end (incl. start)"), ("steady", "steady state (25-95%)")):
        local, remote = results["local"][key], results["s3"][key]
        if not local:
            continue
        rounds = ", ".join(f"{r / loc:.2f}" for loc, r in zip(local, remote, strict=True))
        print(
            f"  {label:<26}{median(local):>9.2f} /s {median(remote):>9.2f} /s"
            f"{median(remote) / median(local):>11.2f}x   (rounds: {rounds})"
        )
    print(
        f"  rerun against the bucket: {'reused the entry' if reused else 'PREPARED AGAIN'} in {rerun_s:.1f} s"
    )


if __name__ == "__main__":
    main()
