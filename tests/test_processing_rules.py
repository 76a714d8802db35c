"""The processor's defaults are the official checkpoint's, and its size arithmetic refuses what it cannot do."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from phi3v_ray.errors import DataError
from phi3v_ray.model.processing import (
    hd_canvas,
    hd_canvas_size,
    image_tokens_for_canvas,
    num_image_tokens,
)


@pytest.fixture(scope="module")
def official(official_files: Path) -> dict:
    preprocessor = json.loads((official_files / "preprocessor_config.json").read_text())
    config = json.loads((official_files / "config.json").read_text())
    vision = config.get("img_processor", {}) or {}
    return {
        "num_crops": preprocessor["num_crops"],
        "crop_size": 336,
        "patch_size": 14,
        "num_img_tokens": preprocessor["num_img_tokens"],
        "image_dim_out": vision.get("image_dim_out"),
    }


def test_defaults_are_the_official_processor_settings(official: dict) -> None:
    # 144 tokens per crop = (336 / 14 / 2)**2 merged tokens
    assert (official["crop_size"] // official["patch_size"] // 2) ** 2 == official["num_img_tokens"]
    for width, height in [(1000, 300), (640, 480), (300, 1000), (5000, 5000)]:
        explicit = num_image_tokens(
            width=width,
            height=height,
            num_crops=official["num_crops"],
            crop_size=official["crop_size"],
            patch_size=official["patch_size"],
        )
        assert num_image_tokens(width=width, height=height) == explicit
        canvas = hd_canvas_size(width, height, official["num_crops"], official["crop_size"])
        assert hd_canvas_size(width, height) == canvas
        assert image_tokens_for_canvas(*canvas) == image_tokens_for_canvas(
            *canvas, official["crop_size"], official["patch_size"]
        )


def test_default_hd_canvas_uses_sixteen_crops_of_336() -> None:
    canvas = hd_canvas(Image.new("RGB", (2000, 2000), (10, 20, 30)))
    assert canvas.shape == (3, 4 * 336, 4 * 336)  # a square image at 16 crops: a 4×4 grid


@pytest.mark.parametrize(("width", "height"), [(0, 5), (5, 0), (0, 0)])
def test_an_empty_image_size_is_refused(width: int, height: int) -> None:
    with pytest.raises(DataError, match="the image is empty"):
        hd_canvas_size(width, height)


def test_a_non_integer_aspect_ratio_keeps_its_exact_float_ratio() -> None:
    # 1000×300 at 16 crops: scale 6 (6·ceil(6/3.33) = 12 ≤ 16 < 7·3), so the long side is 6·336 = 2016 and the
    # short side int(2016 / 3.333…) = 604, padded to 2·336.
    assert hd_canvas_size(1000, 300) == (672, 2016)
    assert hd_canvas_size(300, 1000) == (2016, 672)
    canvas = hd_canvas(Image.new("RGB", (1000, 300), (0, 0, 0)))
    dark_rows = np.flatnonzero((canvas[0] == 0).all(axis=1))
    assert len(dark_rows) == 604  # the resized picture, between white padding
    assert dark_rows[0] == int((672 - 604) / 2)
