"""`phi3v-ray data fetch`: download a catalog's product images in parallel on Ray into a catalog directory."""

from __future__ import annotations

import argparse

HELP = "download a catalog's images (hub dataset, parquet or CSV) in parallel, resumably"
DESCRIPTION = """\
Read a product catalog with the 17 Burberry columns, check every row, and download the images in parallel on Ray
(many requests per core, timeouts, retries on timeouts/5xx, a size limit, every image decoded before it is kept).

SOURCE is a Hugging Face dataset id (needs `pip install phi3v-ray[hub]`), a .parquet file or a .csv file (a local
path or an s3:// / gs:// URI). OUT is a local directory or an object-store prefix such as s3://bucket/burberry: Ray
tasks on any node write the images straight there, each object whole or not at all.
Writes:
  OUT/manifest.parquet  every input row with `status` ("ok" or why not) and `local_image_path`
  OUT/images/           <product_code>.<jpg|png|webp>

Nothing is dropped silently: rows without a URL, with a non-numeric price or an empty title are listed with their
reason. Run it again to fetch only what is still missing (what OUT already holds is listed once and verified).

URLs whose host resolves (also after a redirect) to a link-local (the cloud metadata service 169.254.169.254),
loopback, private, unspecified or multicast address are refused with status `blocked_address`; pass
--allow-private-addresses for a catalog served from inside your own network.
S3 endpoint and credentials come from the environment or the instance profile (AWS_ENDPOINT_URL for MinIO/R2).

example:
  phi3v-ray data fetch --source DBQ/Burberry.Product.prices.United.States --out data/burberry
  phi3v-ray data fetch --source DBQ/Burberry.Product.prices.United.States --out s3://my-bucket/burberry
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options for source, destination and patience."""
    parser.add_argument(
        "--source", required=True, help="hub dataset id, or path or URI of a .parquet / .csv catalog"
    )
    parser.add_argument(
        "--out",
        required=True,
        help="catalog directory or URI (s3://bucket/prefix) to write manifest.parquet and images/ into",
    )
    parser.add_argument("--connect-timeout", type=float, default=5.0, help="seconds to connect (default 5)")
    parser.add_argument(
        "--read-timeout", type=float, default=20.0, help="seconds to wait for data (default 20)"
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=3,
        help="extra attempts after timeouts, connection errors, 5xx (default 3)",
    )
    parser.add_argument(
        "--max-mb", type=float, default=25.0, help="largest image accepted, in MB (default 25)"
    )
    parser.add_argument(
        "--threads", type=int, default=16, help="concurrent requests per Ray task (default 16)"
    )
    parser.add_argument("--rows-per-task", type=int, default=64, help="images per Ray task (default 64)")
    parser.add_argument(
        "--allow-private-addresses",
        action="store_true",
        help="allow image URLs on loopback, link-local or private addresses (refused by default: SSRF guard)",
    )
    parser.add_argument("--ray-address", default=None, help="Ray cluster to use (default: start a local one)")


def run(args: argparse.Namespace) -> int:
    """Fetch, then print the summary by outcome; exit 0 even when some rows failed (they are in the manifest)."""
    from phi3v_ray.data.fetch import FetchOptions, fetch_catalog
    from phi3v_ray.ray_session import connect
    from phi3v_ray.storage import location

    location(args.out)  # a misspelled location (file://host/x, s3a://...) is refused before Ray starts

    options = FetchOptions(
        connect_timeout_s=args.connect_timeout,
        read_timeout_s=args.read_timeout,
        retries=args.retries,
        max_bytes=int(args.max_mb * 1024 * 1024),
        threads_per_task=args.threads,
        rows_per_task=args.rows_per_task,
        allow_private_addresses=args.allow_private_addresses,
    )
    connect(address=args.ray_address, log_to_driver=False)
    summary = fetch_catalog(args.source, args.out, options)
    print("\n".join(summary.lines()))
    return 0
