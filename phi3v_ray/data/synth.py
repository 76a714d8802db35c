"""Sample catalog generator: a Burberry-shaped table plus product photos whose look carries the labels.

Tests, benchmarks and the demo need data with the real catalog's structure and variability, and a model must be
able to learn from the pictures: the silhouette follows `category3_code`, the garment colour is the one named in the
title (or shared by colourways whose title names none), the material/pattern texture is the one that moves the
price, and the object's scale follows `category1_code` (kids' items are drawn smaller). Images are drawn at a small
size with PIL and upscaled (synth_images.py), so 3,040 rows take seconds. Same seed, byte-identical output.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from phi3v_ray.data.schema import (
    BURBERRY_COLUMNS,
    STATUS_OK,
    burberry_arrow_schema,
    manifest_arrow_schema,
    validate_catalog,
)
from phi3v_ray.data.synth_dir import plan_out_dir, write_record
from phi3v_ray.data.synth_images import ImageSpec, encode_product
from phi3v_ray.data.vocabulary import CATEGORIES, COLOURS, GENDERS, MATERIALS, PATTERNS
from phi3v_ray.errors import DataError

CATALOG_FILE = "catalog.parquet"
MANIFEST_FILE = "manifest.parquet"
IMAGES_DIR = "images"
IMAGE_URL_PREFIX = "https://assets.example.com/is/image/Burberryltd/"
SCRAPE_DATE = "2023-11-17"
USD_TO_EUR = 0.92

# What the title calls each silhouette (every word is in vocabulary.STYLE_WORDS).
NOUNS: dict[str, str] = {
    "coat": "Trench Coat",
    "jacket": "Quilted Jacket",
    "shirt": "Shirt",
    "sweater": "Sweater",
    "dress": "Dress",
    "bag": "Shoulder Bag",
    "tote": "Tote",
    "scarf": "Scarf",
    "cap": "Baseball Cap",
    "wallet": "Wallet",
    "shoe": "Sneakers",
    "boot": "Boots",
    "box": "Logo Card Case",
}
# Materials a silhouette plausibly comes in; the material then sets the texture and the price premium.
_SOFT = ("Cotton", "Wool", "Cashmere", "Silk", "Nylon")
_HARD = ("Leather", "Nylon", "Cotton")
MATERIALS_BY_SILHOUETTE: dict[str, tuple[str, ...]] = {
    "coat": ("Cotton", "Wool", "Cashmere", "Nylon"),
    "jacket": ("Nylon", "Cotton", "Wool", "Leather"),
    "shirt": ("Cotton", "Silk"),
    "sweater": ("Wool", "Cashmere", "Cotton"),
    "dress": ("Silk", "Cotton", "Wool"),
    "bag": _HARD,
    "tote": _HARD,
    "scarf": ("Cashmere", "Wool", "Silk"),
    "cap": ("Cotton", "Wool", "Nylon"),
    "wallet": ("Leather",),
    "shoe": _HARD,
    "boot": ("Leather",),
    "box": _HARD,
}
STYLES: tuple[str, ...] = (
    "Classic", "Heritage", "Oversized", "Slim", "Cropped", "Long", "Mini", "Vintage", "Reversible",
    "Embroidered", "Belted", "Kensington", "Chelsea", "Westminster", "Lola", "Knight", "Equestrian",
)  # fmt: skip
GENDER_PRICE: dict[str, float] = {"WOMAN": 1.05, "MAN": 1.0, "KIDS": 0.5}
BROKEN_URLS: tuple[str, ...] = ("htt", "http:/", "N.A", "h", "https:")


def retail_round(price: float) -> float:
    """Round like a price tag: to 5 below 100, 10 below 1,000, 50 below 5,000, else 100."""
    step = 5 if price < 100 else 10 if price < 1000 else 50 if price < 5000 else 100
    return float(max(step, round(price / step) * step))


def _unique_product_codes(rng: np.random.Generator, count: int) -> list[int]:
    """Distinct codes in the real catalog's range (3.4e7–8.1e7), in a seed-determined order."""
    codes: list[int] = []
    seen: set[int] = set()
    while len(codes) < count:
        for code in rng.integers(34_000_000, 81_000_000, size=count - len(codes) + 8).tolist():
            if code not in seen and len(codes) < count:
                seen.add(code)
                codes.append(code)
    return codes


def _catalog_row(
    code: int, title: str, categories: tuple[str, str, str], price: float, image_url: str
) -> dict[str, object]:
    """One row's 17 catalog columns as the real scrape fills them (full price, no discount, USD and EUR)."""
    gender, category2, category3 = categories
    slug = title.lower().replace(" ", "-")
    return {
        "website_name": "BURBERRY",
        "competence_date": SCRAPE_DATE,
        "country_code": "USA",
        "currency_code": "USD",
        "brand": "BURBERRY",
        "category1_code": gender,
        "category2_code": category2,
        "category3_code": category3,
        "product_code": code,
        "title": title,
        "itemurl": f"https://us.burberry.com/{slug}-p{code}",
        "imageurl": image_url,
        "full_price": price,
        "price": price,
        "full_price_eur": round(price * USD_TO_EUR, 2),
        "price_eur": round(price * USD_TO_EUR, 2),
        "flg_discount": 0,
    }


def build_table(
    rows: int, seed: int, broken_url_share: float
) -> tuple[dict[str, list], list[ImageSpec | None]]:
    """The catalog columns and one image spec per row (None for rows whose URL is broken or missing)."""
    rng = np.random.default_rng([seed, 0])
    category_names = list(CATEGORIES)
    category_weights = np.array([0.35 if c == "N.A." else 1.0 for c in category_names])
    category_weights /= category_weights.sum()
    colour_names = list(COLOURS)
    codes = _unique_product_codes(rng, rows)
    columns: dict[str, list] = {name: [] for name in BURBERRY_COLUMNS}
    specs: list[ImageSpec | None] = []
    while len(specs) < rows:
        category3 = category_names[rng.choice(len(category_names), p=category_weights)]
        category2, silhouette, log_price_mean = CATEGORIES[category3]
        gender = GENDERS[rng.choice(3, p=[0.45, 0.4, 0.15])]
        materials = MATERIALS_BY_SILHOUETTE[silhouette]
        material = materials[rng.integers(len(materials))]
        pattern = list(PATTERNS)[rng.choice(len(PATTERNS), p=[0.5, 0.25, 0.15, 0.1])]
        style = STYLES[rng.integers(len(STYLES))]
        pattern_word = "" if pattern == "Plain" else f"{pattern} "
        base_title = f"{style} {pattern_word}{material} {NOUNS[silhouette]}"
        # Some products come in several colourways; a quarter of them share one title that names no colour.
        colourways = int(rng.choice([1, 2, 3], p=[0.6, 0.28, 0.12]))
        colour_in_title = colourways == 1 or rng.random() < 0.75
        price = retail_round(
            math.exp(rng.normal(log_price_mean, 0.3))
            * MATERIALS[material]
            * PATTERNS[pattern]
            * GENDER_PRICE[gender]
        )
        for colour_index in rng.choice(len(colour_names), size=colourways, replace=False).tolist():
            if len(specs) == rows:
                break
            row = len(specs)
            colour = colour_names[colour_index]
            title = f"{base_title} in {colour}" if colour_in_title else base_title
            code = codes[row]
            broken = rng.random() < broken_url_share
            if broken:
                image_url = "" if rng.random() < 0.5 else BROKEN_URLS[rng.integers(len(BROKEN_URLS))]
            else:
                image_url = IMAGE_URL_PREFIX + str(uuid.UUID(bytes=rng.bytes(16), version=4)).upper()
            use_png = rng.random() < 0.1
            values = _catalog_row(code, title, (gender, category2, category3), price, image_url)
            for name, value in values.items():
                columns[name].append(value)
            extension = "png" if use_png else "jpg"
            specs.append(
                None
                if broken
                else ImageSpec(
                    silhouette=silhouette,
                    colour=COLOURS[colour],
                    material=material,
                    pattern=pattern,
                    gender=gender,
                    seed=(seed, row),
                    relative_path=f"{IMAGES_DIR}/{code}.{extension}",
                )
            )
    return columns, specs


# --- writing -------------------------------------------------------------------------------------------------------


def synth_catalog(
    out_dir: str | os.PathLike,
    rows: int,
    *,
    seed: int = 0,
    broken_url_share: float = 0.03,
    overwrite: bool = False,
    threads: int = 4,
    progress: Callable[[int], None] | None = None,
    report: Callable[[str], None] | None = None,
) -> Path:
    """Write `catalog.parquet`, `manifest.parquet` and `images/` for `rows` sample products; returns the dir.

    PIL releases the GIL while resizing and encoding, so a few threads use the cores without pickling anything.
    A run killed half way is resumed by the same call (same settings) or cleaned up (other settings); `report`
    gets one line for each such decision and for files in the directory that synth did not write and kept.
    """
    if rows < 1:
        raise DataError(f"--rows {rows}: expected a positive number of rows")
    if not 0.0 <= broken_url_share < 1.0:
        raise DataError(f"broken URL share {broken_url_share}: expected a fraction in [0, 1)")
    out = Path(out_dir)
    settings = {"rows": rows, "seed": seed, "broken_url_share": broken_url_share}
    plan = plan_out_dir(out, settings, _image_paths, overwrite=overwrite)
    for note in plan.notes:
        (report or (lambda _: None))(note)
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    write_record(out, settings, finished=False)  # before the first image: a killed run is known as ours
    columns, specs = build_table(rows, seed, broken_url_share)

    def write_one(spec: ImageSpec | None) -> None:
        if spec is not None and spec.relative_path not in plan.resume_existing:
            _write_whole(out / spec.relative_path, encode_product(spec))

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        try:
            for _ in pool.map(write_one, specs):
                if progress is not None:
                    progress(1)
        except BaseException:  # Ctrl-C or a failed write: stop drawing now; the record lets the rerun resume
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    local_paths = [None if spec is None else spec.relative_path for spec in specs]
    catalog = pa.Table.from_pydict(columns, schema=burberry_arrow_schema())
    catalog = catalog.append_column(
        pa.field("local_image_path", pa.string()), pa.array(local_paths, pa.string())
    )
    pq.write_table(catalog, out / CATALOG_FILE)
    _write_manifest(out, catalog, local_paths)
    write_record(out, settings, finished=True)
    return out


def _image_paths(settings: dict[str, float | int]) -> list[str]:
    """The image files a run with these settings writes (rebuilding the table draws no picture)."""
    _, specs = build_table(int(settings["rows"]), int(settings["seed"]), float(settings["broken_url_share"]))
    return [spec.relative_path for spec in specs if spec is not None]


def _write_whole(path: Path, data: bytes) -> None:
    """Write to a `.part-` name, then rename: a killed run never leaves a truncated image under the real name."""
    partial = path.with_name(f"{path.name}.part-{uuid.uuid4().hex[:8]}")
    partial.write_bytes(data)
    os.replace(partial, path)


def _write_manifest(out: Path, catalog: pa.Table, local_paths: list[str | None]) -> None:
    """The same manifest `data fetch` writes, so split/prepare treat a synth dir and a fetched dir alike."""
    ok, rejects = validate_catalog(
        catalog.select(list(BURBERRY_COLUMNS)).to_pandas(), source=str(out / CATALOG_FILE)
    )
    statuses = [STATUS_OK] * catalog.num_rows
    for position, status in zip(rejects.index.tolist(), rejects["status"].tolist(), strict=True):
        statuses[position] = status
    paths = [
        path if status == STATUS_OK else None for path, status in zip(local_paths, statuses, strict=True)
    ]
    manifest = catalog.select(list(BURBERRY_COLUMNS))
    manifest = manifest.append_column("status", pa.array(statuses, pa.string()))
    manifest = manifest.append_column("local_image_path", pa.array(paths, pa.string()))
    pq.write_table(manifest.cast(manifest_arrow_schema()), out / MANIFEST_FILE)
