"""`phi3v-ray data synth`: write a sample product catalog (table + photos) shaped like the Burberry dataset."""

from __future__ import annotations

import argparse

from phi3v_ray.commands.data_flags import fraction_below_one, whole_number

HELP = "generate a sample catalog whose photos carry category, colour, material and price signal"
DESCRIPTION = """\
Write a sample product catalog you can train on without downloading anything:

  OUT/catalog.parquet   the 17 Burberry columns + local_image_path
  OUT/manifest.parquet  the same rows with a status per row (what `data fetch` writes), ready for `data split`
  OUT/images/           one JPEG/PNG photo per product (300-1600 px)

The silhouette shows the category (category3_code), the colour is the one in the title, the material and pattern
(check, monogram, leather sheen, ...) move the price, and kids' items are drawn smaller. A share of rows get a
broken or empty image URL, like the real catalog. The same --seed always gives byte-identical files.

OUT/.synth.json records the settings, so synth knows which files it wrote: a run that was interrupted is resumed
when run again with the same settings (or cleaned up when the settings differ), and --overwrite removes only the
previous catalog's own files; anything else in OUT is kept and named.

example:
  phi3v-ray data synth --rows 3040 --out data/sample
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options for the generator."""
    parser.add_argument(
        "--rows", type=whole_number(1), default=3040, help="number of products (default 3040, the real size)"
    )
    parser.add_argument("--out", required=True, help="directory to write the catalog into")
    parser.add_argument(
        "--seed", type=whole_number(0), default=0, help="random seed; same seed, same files (default 0)"
    )
    parser.add_argument(
        "--broken-url-share",
        type=fraction_below_one,
        default=0.03,
        help="fraction of rows with a broken or empty image URL and no image (default 0.03)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a catalog data synth wrote in --out (only its own files are removed)",
    )
    parser.add_argument(
        "--threads", type=whole_number(1), default=4, help="drawing/encoding threads (default 4)"
    )


def run(args: argparse.Namespace) -> int:
    """Generate the catalog with a progress bar and print where it went (and what it resumed, removed or kept)."""
    from pathlib import Path

    from tqdm import tqdm

    from phi3v_ray.data.synth import synth_catalog
    from phi3v_ray.data.synth_dir import check_out_dir

    check_out_dir(
        Path(args.out)
    )  # before the progress bar: a file given as --out is one line, not a traceback
    with tqdm(total=args.rows, desc="synth images", unit="row") as bar:
        out = synth_catalog(
            args.out,
            args.rows,
            seed=args.seed,
            broken_url_share=args.broken_url_share,
            overwrite=args.overwrite,
            threads=args.threads,
            progress=bar.update,
            report=lambda note: bar.write(f"[synth] {note}"),
        )
    print(f"wrote {args.rows} rows to {out}/catalog.parquet, {out}/manifest.parquet and {out}/images/")
    return 0
