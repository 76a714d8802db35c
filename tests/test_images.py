"""Safe decoding: each kind of awkward catalog image is either decoded correctly or refused with a reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from image_bombs import write_pixel_bomb_png
from PIL import Image

from phi3v_ray.data import images
from phi3v_ray.data.images import decode_image
from phi3v_ray.model.geometry import hd_resized_extent


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def test_rgb_jpeg_decodes_to_same_pixels_as_pil(tmp_path: Path) -> None:
    source = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 60, 3), dtype=np.uint8))
    path = _save(source, tmp_path / "a.png")
    decoded = decode_image(path)
    assert decoded.ok and decoded.image.mode == "RGB"
    assert np.array_equal(np.asarray(decoded.image), np.asarray(source))


def test_missing_file_is_rejected_with_its_path(tmp_path: Path) -> None:
    decoded = decode_image(tmp_path / "nope.jpg")
    assert not decoded.ok
    assert decoded.reason == images.REASON_MISSING
    assert "nope.jpg" in decoded.detail


@pytest.mark.parametrize("value", [None, "", float("nan")])
def test_row_without_path_is_rejected(value) -> None:
    assert decode_image(value).reason == images.REASON_NO_PATH


def test_empty_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    assert decode_image(path).reason == images.REASON_EMPTY


def test_text_file_named_jpg_is_rejected_as_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "page.jpg"
    path.write_text("<html>404 not found</html>")
    assert decode_image(path).reason == images.REASON_UNREADABLE


def test_truncated_jpeg_is_rejected_not_raised(tmp_path: Path) -> None:
    source = Image.fromarray(np.random.default_rng(1).integers(0, 255, (200, 200, 3), dtype=np.uint8))
    full = _save(source, tmp_path / "full.jpg", quality=90)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 3])
    decoded = decode_image(cut)
    assert not decoded.ok
    assert decoded.reason == images.REASON_TRUNCATED


def test_corrupt_png_body_is_rejected(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (64, 64), (10, 200, 30)), tmp_path / "x.png")
    data = bytearray(path.read_bytes())
    data[60:100] = b"\x00" * 40  # damage the IDAT stream, keep the header
    path.write_bytes(bytes(data))
    decoded = decode_image(path)
    assert not decoded.ok and decoded.reason in {images.REASON_TRUNCATED, images.REASON_DECODE_ERROR}


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = _save(Image.new("CMYK", (30, 20), (0, 255, 255, 0)), tmp_path / "cmyk.jpg", quality=95)
    decoded = decode_image(path)
    assert decoded.ok and decoded.original_mode == "CMYK" and decoded.image.mode == "RGB"
    red, green, blue = np.asarray(decoded.image)[10, 15]
    assert red > 200 and green < 60 and blue < 60


def test_sixteen_bit_greyscale_is_rescaled_not_clipped_to_white(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 256, dtype=np.uint16).reshape(16, 16)
    path = _save(Image.fromarray(ramp), tmp_path / "deep.png")
    decoded = decode_image(path)
    assert decoded.ok
    grey = np.asarray(decoded.image)[..., 0].astype(int)
    # PIL's plain convert("RGB") would map everything above 255 to white; a rescale keeps the ramp.
    assert grey.min() == 0 and grey.max() == 255
    assert len(np.unique(grey)) > 200


def test_palette_image_with_transparency_keeps_its_colours(tmp_path: Path) -> None:
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([255, 255, 255, 200, 30, 40] + [0] * 762)
    path = _save(palette, tmp_path / "pal.png", transparency=0)
    decoded = decode_image(path)
    assert decoded.ok and decoded.image.mode == "RGB"
    assert tuple(np.asarray(decoded.image)[3, 3]) == (200, 30, 40)


def test_alpha_is_dropped_like_the_official_processor(tmp_path: Path) -> None:
    rgba = Image.new("RGBA", (4, 4), (12, 34, 56, 0))  # fully transparent, colour stored underneath
    decoded = decode_image(_save(rgba, tmp_path / "alpha.png"))
    assert tuple(np.asarray(decoded.image)[0, 0]) == (12, 34, 56)


def test_one_pixel_image_is_kept(tmp_path: Path) -> None:
    decoded = decode_image(_save(Image.new("L", (1, 1), 90), tmp_path / "dot.png"))
    assert decoded.ok and decoded.image.size == (1, 1)


def test_strip_whose_short_side_would_resize_to_zero_is_rejected(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (1, 6000), "red"), tmp_path / "strip.png")
    assert hd_resized_extent(1, 6000, 16, 336)[1] == 0
    decoded = decode_image(path)
    assert decoded.reason == images.REASON_ASPECT
    assert "1×6000" in decoded.detail


def test_extreme_but_representable_aspect_ratio_is_kept(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (2000, 10), "blue"), tmp_path / "wide.png")
    assert hd_resized_extent(2000, 10, 16, 336) == (5376, 26)
    assert decode_image(path).ok


def test_pixel_bomb_is_refused_before_its_pixels_are_decoded(tmp_path: Path) -> None:
    # 20000×20000 pixels (400 MP, 1.2 GB as RGB) in well under a megabyte: only the header may be read.
    path = write_pixel_bomb_png(tmp_path / "bomb.png", 20000, 20000)
    assert path.stat().st_size < 1_000_000
    decoded = decode_image(path, max_pixels=50_000_000)
    assert decoded.reason == images.REASON_TOO_MANY_PIXELS
    assert "400000000" in decoded.detail


def test_image_over_pils_own_bomb_limit_is_a_reason_not_an_exception(tmp_path: Path) -> None:
    path = write_pixel_bomb_png(tmp_path / "huge.png", 14000, 14000)  # 196 MP: over PIL's own 2× limit
    decoded = decode_image(path, max_pixels=10**10)
    assert decoded.reason == images.REASON_TOO_MANY_PIXELS


def test_pixel_limit_is_a_per_call_setting(tmp_path: Path) -> None:
    path = _save(Image.new("RGB", (100, 100)), tmp_path / "small.png")
    assert decode_image(path, max_pixels=10_000).ok
    assert decode_image(path, max_pixels=9_999).reason == images.REASON_TOO_MANY_PIXELS


def test_animated_gif_uses_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (10, 10), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    red, _, blue = np.asarray(decode_image(path).image)[5, 5]
    assert red > 200 and blue < 50
