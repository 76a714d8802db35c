"""Decoding limits and pixel-mode conversions, checked at their edges."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from phi3v_ray.data.images import (
    DEFAULT_MAX_PIXELS,
    REASON_ASPECT,
    REASON_TOO_MANY_PIXELS,
    decode_image,
)
from phi3v_ray.model.geometry import hd_resized_extent


def _save(image: Image.Image, path: Path) -> Path:
    image.save(path)
    return path


def test_an_image_of_exactly_the_pixel_limit_is_kept_and_one_more_pixel_is_refused(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (10, 10)), tmp_path / "a.png")
    assert decode_image(path, max_pixels=100).ok
    refused = decode_image(path, max_pixels=99)
    assert refused.reason == REASON_TOO_MANY_PIXELS and "100 pixels, over the limit of 99" in refused.detail


def test_the_default_pixel_limit_is_64_megapixels(tmp_path: Path) -> None:
    from image_bombs import write_pixel_bomb_png

    assert DEFAULT_MAX_PIXELS == 64_000_000
    at_limit = write_pixel_bomb_png(tmp_path / "limit.png", 8000, 8000)  # header only: never decoded
    over = write_pixel_bomb_png(tmp_path / "over.png", 8000, 8001)
    assert decode_image(over).reason == REASON_TOO_MANY_PIXELS
    assert decode_image(at_limit).reason != REASON_TOO_MANY_PIXELS


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [
        (1000, 300, (2016, 604)),  # ratio 3.33: scale 6, short side int(2016 / 3.333…)
        (300, 1000, (2016, 604)),
        (500, 500, (1344, 1344)),  # square: a 4×4 grid at 16 crops
        (1000, 500, (1680, 840)),
    ],
)
def test_hd_resized_extent_follows_the_official_float_arithmetic(width, height, expected) -> None:
    assert hd_resized_extent(width, height, 16, 336) == expected


def test_default_crop_settings_are_sixteen_crops_of_336(tmp_path: Path) -> None:
    # A 1-pixel-wide strip keeps a row only while 16·336 = 5376 ≥ its length: 5370 survives the resize, 5380 does
    # not. Fewer crops or smaller crops would refuse the first, more or larger ones would keep the second.
    kept = _save(Image.new("RGB", (1, 5370)), tmp_path / "kept.png")
    refused = _save(Image.new("RGB", (1, 5380)), tmp_path / "refused.png")
    assert decode_image(kept).ok
    assert decode_image(refused).reason == REASON_ASPECT
    assert "num_crops=16, crop_size=336" in decode_image(refused).detail


@pytest.mark.parametrize(
    ("mode", "value", "grey"),
    [
        ("I", 200, 200),  # 32-bit integer data within 8 bits: kept as is
        ("I", 255, 255),
        ("I", 256, round(256 * 255 / 65535)),  # one past 8 bits: the whole image is read as 16-bit
        ("I", 4000, round(4000 * 255 / 65535)),  # wider than 8 bits: read as 16-bit
        ("I;16", 200, round(200 * 255 / 65535)),  # declared 16-bit: always rescaled
        ("F", 0.5, 128),  # float in [0, 1]: unit range
        ("F", 1.0, 255),
        ("F", 2.0, 2),  # just past unit range: 8-bit values
        ("F", 100.0, 100),  # float beyond 1: 8-bit values
        ("F", 300.0, 255),  # out of range: clipped, not wrapped around
    ],
)
def test_high_bit_depth_greyscale_is_rescaled_by_its_range(tmp_path: Path, mode, value, grey) -> None:
    array = np.full((4, 4), value, dtype={"I": np.int32, "I;16": np.uint16, "F": np.float32}[mode])
    image = Image.fromarray(array, mode=mode) if mode != "I;16" else Image.fromarray(array)
    path = _save(image, tmp_path / "grey.tif")
    decoded = decode_image(path)
    assert decoded.ok, decoded.detail
    assert decoded.image.mode == "RGB"
    assert np.asarray(decoded.image)[0, 0].tolist() == [grey, grey, grey]


def test_an_rgb_image_keeps_its_pixels_and_reports_its_mode(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (3, 2), (1, 2, 3)), tmp_path / "rgb.png")
    decoded = decode_image(path)
    assert decoded.original_mode == "RGB" and np.asarray(decoded.image)[1, 2].tolist() == [1, 2, 3]
    grey = decode_image(_save(Image.new("L", (3, 2), 77), tmp_path / "l.png"))
    assert grey.original_mode == "L" and np.asarray(grey.image)[0, 0].tolist() == [77, 77, 77]


@pytest.mark.parametrize(
    ("mode", "values", "expected"),
    [
        (
            "F",
            [0.5, 100.0],
            [0, 100],
        ),  # the brightest pixel decides the range: 8-bit here, so 0.5 rounds to 0
        ("F", [0.0, 0.5], [0, 128]),  # all within [0, 1]: unit range
        ("I", [100, 4000], [round(100 * 255 / 65535), round(4000 * 255 / 65535)]),  # one wide pixel: 16-bit
    ],
)
def test_the_range_of_a_greyscale_image_is_judged_by_its_brightest_pixel(
    tmp_path, mode, values, expected
) -> None:
    array = np.asarray([values], dtype=np.float32 if mode == "F" else np.int32)
    path = _save(Image.fromarray(array, mode=mode), tmp_path / "mixed.tif")
    decoded = np.asarray(decode_image(path).image)[0, :, 0].tolist()
    assert decoded == expected
