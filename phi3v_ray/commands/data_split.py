"""`phi3v-ray data split`: stable train/val/test splits of a catalog directory, written to splits.parquet."""

from __future__ import annotations

import argparse

HELP = "assign each product to train/val/test by a stable hash (no product in two splits)"
DESCRIPTION = """\
Read DIR/manifest.parquet (from `data synth` or `data fetch`), keep the rows whose image is ok, and give each a
split from a sha256 hash of its group key. The same catalog splits the same way on every machine; rows added later
never move existing rows.

--by title (default) keeps all colourways of one product (they share a title) in the same split;
--by product_code splits every product code on its own.
Writes DIR/splits.parquet and prints per-split counts, the category distribution, and how many manifest rows it
left out because their image is not ok (by status).

DIR may be a local folder or an object-store prefix (s3://bucket/catalog, gs://...); split rows then name their
images by URI, so preparation on any node reads them from the bucket. The S3 endpoint (MinIO, R2) and credentials
come from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...) or the instance profile.

examples:
  phi3v-ray data split data/sample --ratios 0.8,0.1,0.1
  phi3v-ray data split s3://my-bucket/phi3v-ray/catalog
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options for the grouping key and the ratios."""
    parser.add_argument(
        "dir", metavar="DIR", help="catalog directory or s3:// / gs:// prefix holding manifest.parquet"
    )
    parser.add_argument(
        "--by", choices=("title", "product_code"), default="title", help="group key (default title)"
    )
    parser.add_argument("--ratios", default="0.8,0.1,0.1", help="train,val,test fractions summing to 1")


def run(args: argparse.Namespace) -> int:
    """Split, write, report (with the manifest rows left out because their image is not ok)."""
    from phi3v_ray.data.split import parse_ratios, split_catalog_counted, split_report

    ratios = parse_ratios(args.ratios)
    rows, left_out = split_catalog_counted(args.dir, by=args.by, ratios=ratios)
    line = f"wrote {len(rows)} rows to {args.dir}/splits.parquet (grouped by {args.by})"
    if left_out:
        kinds = ", ".join(
            f"{kind} {count}" for kind, count in sorted(left_out.items(), key=lambda kv: -kv[1])
        )
        line += f"; left out {sum(left_out.values())} whose image status is not ok ({kinds})"
    print(line)
    print("\n".join(split_report(rows)))
    return 0
