"""The sample catalog's product photos: a pure function from an ImageSpec to a picture that carries the labels.

Kept apart from synth.py (which builds the table and writes the catalog) because drawing is its own job, one the
demo's warm start reuses. The silhouette follows `category3_code`, the garment colour is the one in the title, the
material/pattern texture is the one that moves the price, and the object's scale follows `category1_code`. Images
are drawn small with PIL and upscaled, so thousands take seconds. Same spec, byte-identical image.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

# Objects are drawn at this share of the frame: the scale tells WOMAN / MAN / KIDS apart.
GENDER_SCALE: dict[str, float] = {"WOMAN": 0.74, "MAN": 0.88, "KIDS": 0.52}
BACKGROUNDS: tuple[tuple[int, int, int], ...] = (
    (246, 246, 244), (236, 232, 226), (226, 229, 233), (252, 252, 252), (214, 210, 202), (240, 236, 240),
)  # fmt: skip
DARK_BACKGROUND = (96, 98, 104)  # for garments too light to stand out on the light studio backdrops
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
    """The garment surface: base colour, then the pattern (check, monogram, stripes) and the material's finish.

    Each finish is a shape a vision patch can see once the photo is shrunk to the model's canvas (ribs, a glow,
    a sheen, seams), not only per-pixel grain: a patch embedding is linear in the pixels, so zero-mean grain looks
    like the plain colour. With grain alone for wool and cashmere (the 2.2x premium) the warm-started tiny base named
    cashmere on 11% of held-out drawings, wool 38%; with ribs and glow 43% and 57%."""
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
    elif spec.material == "Wool":  # knitted ribs, about one vision patch apart at the model's size, and grain
        ribs = np.sin(np.arange(width) / max(1, width) * 7 * 2 * math.pi)[None, :, None]
        pixels = pixels + 38 * ribs + rng.normal(0, 12, size=(height, width, 1))
    elif spec.material == "Cashmere":  # a brushed glow from the middle outwards, and fine grain
        across = (np.arange(width)[None, :] - width / 2) / max(1, width)
        down = (np.arange(height)[:, None] - height / 2) / max(1, height)
        glow = np.exp(-(across**2 + down**2) / 0.06)
        pixels = pixels + 75 * glow[..., None] - 20 + rng.normal(0, 5, size=(height, width, 1))
    elif spec.material == "Nylon":  # quilting seams, wide enough to survive the shrink to the model's canvas
        seams = ((np.arange(width)[None, :] + np.arange(height)[:, None]) % (2 * step)) < 3
        pixels = pixels - 50 * seams[..., None]
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def draw_product(spec: ImageSpec, max_side: int | None = None) -> Image.Image:
    """The product photo at full size: varied canvas shape, backdrop and framing; look follows the labels.

    `max_side` scales the drawing straight to that long side instead of to the full size (300-1,600 px): the demo's
    warm start shrinks every picture to 224 px anyway, and drawing big only to shrink again was most of its time."""
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
    if max_side is not None:
        ratio = max_side / max(full_w, full_h)
        full_w, full_h = max(1, round(full_w * ratio)), max(1, round(full_h * ratio))
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
