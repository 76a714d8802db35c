"""Image geometry of the Phi-3-Vision HD transform: canvas sizes and image-token counts, without touching pixels.

One home for the official arithmetic, because three places need it and must agree to the pixel: the processor
(which draws the canvas), the image embedding (which turns a canvas into tokens) and the data layer (which refuses
images the transform cannot represent before decoding their pixels). The float arithmetic copies the official
processor on purpose (e.g. 448×400 at 4 crops resizes to 599 rows, not 600).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from phi3v_ray.errors import ConfigError, DataError


class HdResize(NamedTuple):
    """How the HD transform resizes one image, in the landscape frame (a portrait is transposed first)."""

    transposed: bool
    resized_w: int
    resized_h: int
    padded_h: int


def check_crop_settings(num_crops: int, crop_size: int, patch_size: int | None = None) -> None:
    """Reject crop settings the HD transform or the 2×2 token merge cannot work with."""
    if not isinstance(num_crops, int) or num_crops < 1:
        raise ConfigError(f"num_crops: found {num_crops!r}, expected an integer >= 1")
    if not isinstance(crop_size, int) or crop_size < 1:
        raise ConfigError(f"crop_size: found {crop_size!r}, expected a positive integer")
    if patch_size is not None:
        if not isinstance(patch_size, int) or patch_size < 1 or crop_size % patch_size:
            raise ConfigError(
                f"patch_size: found {patch_size!r}, expected a positive divisor of crop_size {crop_size}"
            )
        if (crop_size // patch_size) % 2:
            raise ConfigError(
                f"crop_size/patch_size: found {crop_size}/{patch_size} = {crop_size // patch_size} patches per side, "
                "expected an even number (patches are merged 2×2)"
            )


def hd_resized_extent(width: int, height: int, num_crops: int, crop_size: int) -> tuple[int, int]:
    """(long side, short side) in pixels after the official HD resize, before padding; never raises.

    The short side can come out as 0 for extreme strips (a 1×6000 image), which the official code would crash on;
    callers decide whether that is a rejected row (data layer) or an error (hd_resize_plan).
    """
    long_side, short_side = max(width, height), min(width, height)
    ratio = long_side / short_side
    scale = 1
    while scale * math.ceil(scale / ratio) <= num_crops:
        scale += 1
    scale -= 1
    resized_long = int(scale * crop_size)
    return resized_long, int(resized_long / ratio)  # float truncation on purpose, as the official code


def hd_resize_plan(width: int, height: int, num_crops: int, crop_size: int) -> HdResize:
    """The resize and padding of one image; raises DataError for an empty image or one too thin to resize."""
    check_crop_settings(num_crops, crop_size)
    if width < 1 or height < 1:
        raise DataError(f"image size: found {width}×{height} px, expected at least 1×1 (the image is empty)")
    resized_w, resized_h = hd_resized_extent(width, height, num_crops, crop_size)
    if resized_h < 1:
        long_side, short_side = max(width, height), min(width, height)
        raise DataError(
            f"image size: found {long_side}×{short_side} px (aspect ratio {long_side / short_side:.0f}:1), expected "
            f"a ratio whose short side still spans at least 1 px after resizing the long side to {resized_w} px"
        )
    padded_h = math.ceil(resized_h / crop_size) * crop_size
    return HdResize(width < height, resized_w, resized_h, padded_h)


def hd_canvas_size(width: int, height: int, num_crops: int = 16, crop_size: int = 336) -> tuple[int, int]:
    """(H, W) of the padded HD canvas for an image of width×height, both multiples of crop_size."""
    plan = hd_resize_plan(width, height, num_crops, crop_size)
    return (plan.resized_w, plan.padded_h) if plan.transposed else (plan.padded_h, plan.resized_w)


def merged_tokens_per_side(crop_size: int, patch_size: int) -> int:
    """Tokens per crop side after the 2×2 merge (12 for CLIP-L/14 at 336 px)."""
    return crop_size // patch_size // 2


def image_tokens_for_canvas(canvas_h: int, canvas_w: int, crop_size: int = 336, patch_size: int = 14) -> int:
    """Image tokens for a canvas: crop grid with a newline per row, the glb separator, the global grid with newlines."""
    g = merged_tokens_per_side(crop_size, patch_size)
    rows, cols = canvas_h // crop_size, canvas_w // crop_size
    return rows * g * (cols * g + 1) + 1 + g * (g + 1)


def num_image_tokens(
    *, width: int, height: int, num_crops: int = 16, crop_size: int = 336, patch_size: int = 14
) -> int:
    """How many image tokens an image of width×height becomes, without touching pixels (official formula)."""
    check_crop_settings(num_crops, crop_size, patch_size)
    canvas_h, canvas_w = hd_canvas_size(width, height, num_crops, crop_size)
    return image_tokens_for_canvas(canvas_h, canvas_w, crop_size, patch_size)
