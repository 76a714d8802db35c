"""`phi3v-ray data fetch`: download a catalog's product images in parallel on Ray into a catalog directory."""

from __future__ import annotations

import argparse

from phi3v_ray.commands.data_flags import positive_number, whole_number

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
    parser.add_argument(
        "--connect-timeout", type=positive_number, default=5.0, help="seconds to connect (default 5)"
    )
    parser.add_argument(
        "--read-timeout", type=positive_number, default=20.0, help="seconds to wait for data (default 20)"
    )
    parser.add_argument(
        "--retries",
        type=whole_number(0),
        default=3,
        help="extra attempts after timeouts, connection errors, 5xx (default 3)",
    )
    parser.add_argument(
        "--max-mb", type=positive_number, default=25.0, help="largest image accepted, in MB (default 25)"
    )
    parser.add_argument(
        "--threads", type=whole_number(1), default=16, help="concurrent requests per Ray task (default 16)"
    )
    parser.add_argument(
        "--rows-per-task", type=whole_number(1), default=64, help="images per Ray task (default 64)"
    )
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
    _check_inputs(args.source, args.out)

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


def _check_inputs(source: str, out: str) -> None:
    """Refuse a bad --out or --source before Ray starts (8 s): a file as --out, a missing, empty or folder --source,
    a table without the catalog columns, or an --out that holds another catalog's (or an unreadable) manifest."""
    from pathlib import Path

    from phi3v_ray.data.inputs import check_directory_target
    from phi3v_ray.errors import DataError
    from phi3v_ray.storage import is_uri, location

    check_directory_target(out, "--out")
    local = Path(source)
    if not is_uri(source) and local.is_dir():
        raise DataError(
            f"--source {source}: is a directory; expected a .parquet or .csv file or a hub dataset id"
        )
    if not is_uri(source) and local.is_file() and local.stat().st_size == 0:
        raise DataError(f"--source {source}: is empty (0 bytes); expected a .parquet or .csv catalog")
    if is_uri(source) or local.exists() or source.lower().endswith((".parquet", ".csv")):
        from phi3v_ray.data.fetch import read_source, refuse_other_catalog
        from phi3v_ray.data.schema import require_columns

        table = read_source(source)  # read again by the fetch itself: cheap next to the downloads it guards
        require_columns(table, source)
        if table.empty:
            raise DataError(
                f"--source {source}: has the catalog columns but no rows; expected at least one product"
            )
        refuse_other_catalog(location(out), table)
