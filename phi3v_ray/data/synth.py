"""Sample catalog generator: a Burberry-shaped table plus product photos whose look carries the labels.

Tests, benchmarks and the demo need data with the real catalog's structure and variability, and a model must be
able to learn from the pictures: the silhouette follows `category3_code`, the garment colour is the one named in the
title (or shared by colourways whose title names none), the material/pattern texture is the one that moves the
price, and the object's scale follows `category1_code` (kids' items are drawn smaller). Images are drawn at a small
size with PIL and upscaled, so 3,040 rows take seconds, not minutes. Same seed, byte-identical output.
"""

from __future__ import annotations

import io
import math
import os
import shutil
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

from phi3v_ray.data.schema import (
    BURBERRY_COLUMNS,
    STATUS_OK,
    burberry_arrow_schema,
    manifest_arrow_schema,
    validate_catalog,
)
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
# Objects are drawn at this share of the frame: the scale tells WOMAN / MAN / KIDS apart.
GENDER_SCALE: dict[str, float] = {"WOMAN": 0.74, "MAN": 0.88, "KIDS": 0.52}
GENDER_PRICE: dict[str, float] = {"WOMAN": 1.05, "MAN": 1.0, "KIDS": 0.5}
BACKGROUNDS: tuple[tuple[int, int, int], ...] = (
    (246, 246, 244), (236, 232, 226), (226, 229, 233), (252, 252, 252), (214, 210, 202), (240, 236, 240),
)  # fmt: skip
DARK_BACKGROUND = (96, 98, 104)  # for garments too light to stand out on the light studio backdrops
BROKEN_URLS: tuple[str, ...] = ("htt", "http:/", "N.A", "h", "https:")
DRAW_LONG_SIDE = 160  # pixels of the small drawing before upscaling


@dataclass(frozen=True)
class ImageSpec:
    """Everything the picture of one row depends on; the picture is a pure function of it."""

    silhouette: str
    colour: tuple[int, int, int]
    material: str
    pattern: str
    gender: str
    seed: tuple[int, int]
    relative_path: str


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
            slug = title.lower().replace(" ", "-")
            values = {
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


# --- drawing -------------------------------------------------------------------------------------------------------

Point = tuple[float, float]


def _shape_parts(silhouette: str) -> tuple[float, list[list[Point]], list[tuple[float, float, float, float]]]:
    """(width/height of the object's box, polygons, ellipses) in unit box coordinates (y grows downwards)."""
    if silhouette == "coat":
        body = [(0.32, 0.02), (0.68, 0.02), (0.82, 1.0), (0.18, 1.0)]
        left = [(0.32, 0.02), (0.12, 0.1), (0.0, 0.62), (0.1, 0.64), (0.24, 0.2)]
        right = [(1 - x, y) for x, y in left]
        return 0.55, [body, left, right], []
    if silhouette == "jacket":
        body = [(0.28, 0.0), (0.72, 0.0), (0.78, 1.0), (0.22, 1.0)]
        left = [(0.28, 0.0), (0.08, 0.12), (0.0, 0.95), (0.14, 0.97), (0.22, 0.3)]
        right = [(1 - x, y) for x, y in left]
        return 0.85, [body, left, right], []
    if silhouette == "shirt":
        body = [(0.27, 0.06), (0.73, 0.06), (0.73, 1.0), (0.27, 1.0)]
        left = [(0.27, 0.06), (0.0, 0.22), (0.08, 0.38), (0.27, 0.3)]
        right = [(1 - x, y) for x, y in left]
        collar = [(0.4, 0.0), (0.6, 0.0), (0.5, 0.14)]
        return 0.9, [body, left, right, collar], []
    if silhouette == "sweater":
        body = [(0.22, 0.04), (0.78, 0.04), (0.78, 0.92), (0.22, 0.92)]
        left = [(0.22, 0.04), (0.04, 0.14), (0.0, 0.9), (0.12, 0.92), (0.2, 0.3)]
        right = [(1 - x, y) for x, y in left]
        return 1.0, [body, left, right], [(0.38, -0.03, 0.62, 0.09)]
    if silhouette == "dress":
        return 0.6, [[(0.36, 0.0), (0.64, 0.0), (0.62, 0.34), (1.0, 1.0), (0.0, 1.0), (0.38, 0.34)]], []
    if silhouette == "bag":
        return 1.0, [[(0.06, 0.42), (0.94, 0.42), (0.94, 1.0), (0.06, 1.0)]], [(0.16, 0.0, 0.84, 0.84)]
    if silhouette == "tote":
        body = [(0.0, 0.34), (1.0, 0.34), (0.86, 1.0), (0.14, 1.0)]
        return 0.95, [body], [(0.14, 0.0, 0.42, 0.56), (0.58, 0.0, 0.86, 0.56)]
    if silhouette == "scarf":
        return (
            0.34,
            [
                [(0.1, 0.0), (0.9, 0.0), (0.9, 0.9), (0.1, 0.9)],
                [(0.1, 0.9), (0.9, 0.9), (0.95, 1.0), (0.05, 1.0)],
            ],
            [],
        )
    if silhouette == "cap":
        return 1.5, [[(0.3, 0.62), (1.0, 0.7), (0.96, 0.86), (0.3, 0.84)]], [(0.0, 0.05, 0.7, 1.15)]
    if silhouette == "wallet":
        return 1.55, [[(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]], []
    if silhouette == "shoe":
        return (
            2.2,
            [[(0.0, 0.55), (0.12, 0.2), (0.42, 0.12), (0.58, 0.42), (1.0, 0.58), (1.0, 1.0), (0.0, 1.0)]],
            [],
        )
    if silhouette == "boot":
        return 0.85, [[(0.12, 0.0), (0.56, 0.0), (0.6, 0.62), (1.0, 0.72), (1.0, 1.0), (0.12, 1.0)]], []
    return 1.0, [[(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0)]], [(0.3, 0.3, 0.7, 0.7)]


def _shade(colour: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    """The colour lightened (factor > 1) or darkened (< 1), clipped to 0..255."""
    return tuple(int(min(255, max(0, c * factor + (factor - 1) * 60))) for c in colour)  # type: ignore[return-value]


def _luminance(colour: tuple[int, int, int]) -> float:
    return 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]


def _texture(size: tuple[int, int], spec: ImageSpec, rng: np.random.Generator) -> Image.Image:
    """The garment surface: base colour, then the pattern (check, monogram, stripes) and the material's finish."""
    width, height = size
    surface = Image.new("RGB", size, spec.colour)
    draw = ImageDraw.Draw(surface)
    dark = _shade(spec.colour, 0.45) if _luminance(spec.colour) > 90 else _shade(spec.colour, 1.9)
    step = max(4, width // 14)
    if spec.pattern == "Check":
        accent = (190, 30, 36) if _luminance(spec.colour) > 90 else (214, 196, 160)
        for x in range(0, width, step):
            draw.line([(x, 0), (x, height)], fill=dark, width=2)
        for y in range(0, height, step):
            draw.line([(0, y), (width, y)], fill=dark, width=2)
        for x in range(step // 2, width, step * 3):
            draw.line([(x, 0), (x, height)], fill=accent, width=1)
    elif spec.pattern == "Monogram":
        for y in range(0, height, step):
            for x in range((y // step % 2) * step // 2, width, step):
                draw.regular_polygon((x, y, max(2, step // 4)), 4, fill=dark)
    elif spec.pattern == "Striped":
        for y in range(0, height, step):
            draw.rectangle([0, y, width, y + step // 3], fill=dark)
    pixels = np.asarray(surface, dtype=np.float32)
    if spec.material == "Leather":  # a diagonal sheen
        ramp = (np.arange(width)[None, :] + np.arange(height)[:, None]) / float(width + height)
        pixels = pixels + 70 * np.exp(-(((ramp - 0.35) / 0.08) ** 2))[..., None]
    elif spec.material == "Silk":  # soft vertical gloss
        pixels = pixels + 45 * np.sin(np.arange(width) / max(1, width) * 3 * math.pi)[None, :, None] ** 2
    elif spec.material == "Wool":  # coarse grain
        pixels = pixels + rng.normal(0, 18, size=(height, width, 1))
    elif spec.material == "Cashmere":  # fine, brighter grain
        pixels = pixels * 1.08 + rng.normal(0, 7, size=(height, width, 1))
    elif spec.material == "Nylon":  # quilting seams
        seams = ((np.arange(width)[None, :] + np.arange(height)[:, None]) % step) < 1
        pixels = pixels - 45 * seams[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def draw_product(spec: ImageSpec) -> Image.Image:
    """The product photo at full size: varied canvas shape, backdrop and framing; look follows the labels."""
    rng = np.random.default_rng([spec.seed[0], 1, spec.seed[1]])
    shape_roll = rng.random()
    aspect = (
        rng.choice([0.75, 0.8]) if shape_roll < 0.7 else 1.0 if shape_roll < 0.9 else 4 / 3
    )  # width/height
    long_side = int(300 + 1300 * rng.beta(1.6, 3.2))
    full_w, full_h = (
        (int(long_side * aspect), long_side) if aspect <= 1 else (long_side, int(long_side / aspect))
    )
    small_w, small_h = (
        max(8, round(DRAW_LONG_SIDE * full_w / long_side)),
        max(8, round(DRAW_LONG_SIDE * full_h / long_side)),
    )
    background = BACKGROUNDS[rng.integers(len(BACKGROUNDS))]
    if abs(_luminance(background) - _luminance(spec.colour)) < 45:
        background = DARK_BACKGROUND
    canvas = Image.new("RGB", (small_w, small_h), background)
    box_aspect, polygons, ellipses = _shape_parts(spec.silhouette)
    scale = GENDER_SCALE[spec.gender] * rng.uniform(0.93, 1.05)
    box_h = min(small_h * scale, small_w * scale / box_aspect)
    box_w = box_h * box_aspect
    x0 = (small_w - box_w) / 2 + rng.uniform(-0.08, 0.08) * small_w
    y0 = (small_h - box_h) / 2 + rng.uniform(-0.06, 0.06) * small_h

    def place(point: Point) -> Point:
        return (x0 + point[0] * box_w, y0 + point[1] * box_h)

    mask = Image.new("L", (small_w, small_h), 0)
    mask_draw = ImageDraw.Draw(mask)
    shadow_draw = ImageDraw.Draw(canvas)
    bottom = y0 + box_h
    shadow_draw.ellipse(
        [x0, bottom - box_h * 0.04, x0 + box_w, bottom + box_h * 0.05], fill=_shade(background, 0.85)
    )
    for polygon in polygons:
        mask_draw.polygon([place(p) for p in polygon], fill=255)
    for left, top, right, low in ellipses:
        (ex0, ey0), (ex1, ey1) = place((left, top)), place((right, low))
        mask_draw.ellipse([ex0, ey0, ex1, ey1], fill=255)
        if spec.silhouette in ("bag", "tote"):  # handles and straps are rings, not discs
            inset = box_w * 0.07
            mask_draw.ellipse([ex0 + inset, ey0 + inset, ex1 - inset, ey1 - inset], fill=0)
    if spec.silhouette in ("bag", "tote"):
        for polygon in polygons:
            mask_draw.polygon([place(p) for p in polygon], fill=255)
    canvas.paste(_texture((small_w, small_h), spec, rng), mask=mask)
    outline = _shade(spec.colour, 0.6)
    for polygon in polygons:
        shadow_draw.polygon([place(p) for p in polygon], outline=outline)
    image = canvas.resize((full_w, full_h), Image.Resampling.BILINEAR)
    if spec.relative_path.endswith(".png") and rng.random() < 0.4:  # cut-out product shot on transparency
        alpha = mask.resize((full_w, full_h), Image.Resampling.BILINEAR)
        image = image.convert("RGBA")
        image.putalpha(alpha)
    return image


def encode_product(spec: ImageSpec) -> bytes:
    """The file bytes for one row: JPEG quality 85, or PNG (some with alpha), deterministic for the spec."""
    buffer = io.BytesIO()
    image = draw_product(spec)
    if spec.relative_path.endswith(".png"):
        image.save(buffer, format="PNG", compress_level=1)
    else:
        image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


# --- writing -------------------------------------------------------------------------------------------------------


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to mix a new sample with an old one unless asked; with overwrite, remove only what synth writes."""
    existing = [out_dir / CATALOG_FILE, out_dir / MANIFEST_FILE, out_dir / IMAGES_DIR]
    if any(path.exists() for path in existing):
        if not overwrite:
            raise DataError(
                f"{out_dir}: already holds a catalog; expected an empty directory (or pass --overwrite)"
            )
        for path in existing:
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    (out_dir / IMAGES_DIR).mkdir(parents=True, exist_ok=True)


def synth_catalog(
    out_dir: str | os.PathLike,
    rows: int,
    *,
    seed: int = 0,
    broken_url_share: float = 0.03,
    overwrite: bool = False,
    threads: int = 4,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """Write `catalog.parquet`, `manifest.parquet` and `images/` for `rows` sample products; returns the dir.

    PIL releases the GIL while resizing and encoding, so a few threads use the cores without pickling anything.
    """
    if rows < 1:
        raise DataError(f"--rows {rows}: expected a positive number of rows")
    if not 0.0 <= broken_url_share < 1.0:
        raise DataError(f"broken URL share {broken_url_share}: expected a fraction in [0, 1)")
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)
    columns, specs = build_table(rows, seed, broken_url_share)

    def write_one(spec: ImageSpec | None) -> None:
        if spec is not None:
            (out / spec.relative_path).write_bytes(encode_product(spec))

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for _ in pool.map(write_one, specs):
            if progress is not None:
                progress(1)
    local_paths = [None if spec is None else spec.relative_path for spec in specs]
    catalog = pa.Table.from_pydict(columns, schema=burberry_arrow_schema())
    catalog = catalog.append_column(
        pa.field("local_image_path", pa.string()), pa.array(local_paths, pa.string())
    )
    pq.write_table(catalog, out / CATALOG_FILE)
    _write_manifest(out, catalog, local_paths)
    return out


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
