"""Safe image decoding for preprocessing: every file either becomes an RGB PIL image or a reason why not.

Catalog images come from scrapes and user uploads, so a single bad file must never stop a Ray Data job. Decoding
checks the header before it touches pixels (missing file, unreadable header, pixel bomb, an aspect ratio the HD
transform cannot represent), then loads and normalises the pixel mode. Colour handling follows the official Phi-3-V
processor (`convert("RGB")`, which drops alpha without compositing) wherever that is well defined; where PIL's
conversion would destroy the picture (16-bit and float greyscale clip to white), we rescale to 8 bits instead.
"""

from __future__ import annotations

import io
import os
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO

import numpy as np
import pyarrow.fs as pafs
from PIL import Image, UnidentifiedImageError

from phi3v_ray.data.schema import is_missing
from phi3v_ray.errors import StorageError
from phi3v_ray.model.geometry import hd_resized_extent
from phi3v_ray.storage import is_uri, location

# 64 MP: far above any product photo (a 8000×8000 scan is 64 MP) and small enough that a decoded RGB copy (192 MB)
# cannot exhaust a preprocessing actor's memory.
DEFAULT_MAX_PIXELS = 64_000_000

# Reason codes written to the rejects output; stable strings so that counts can be grouped across runs.
REASON_NO_PATH = "no_image_path"
REASON_MISSING = "missing_file"
REASON_EMPTY = "empty_file"
REASON_UNREADABLE = "not_an_image"
REASON_TRUNCATED = "truncated_or_corrupt"
REASON_TOO_MANY_PIXELS = "too_many_pixels"
REASON_ASPECT = "extreme_aspect_ratio"
REASON_UNSUPPORTED_MODE = "unsupported_pixel_mode"
REASON_DECODE_ERROR = "decode_error"

_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


@dataclass(frozen=True)
class DecodedImage:
    """Outcome of decoding one file: `image` (RGB) when it worked, otherwise a reason code and a readable detail."""

    image: Image.Image | None
    reason: str | None = None
    detail: str = ""
    original_mode: str | None = None

    @property
    def ok(self) -> bool:
        """True when `image` holds a usable RGB picture."""
        return self.image is not None


def _reject(reason: str, detail: str, mode: str | None = None) -> DecodedImage:
    return DecodedImage(image=None, reason=reason, detail=detail, original_mode=mode)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; high-bit-depth greyscale is rescaled rather than clipped."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES or mode in {"I", "F"}:
        values = np.asarray(image, dtype=np.float64)
        if mode == "F":
            # Float images carry no declared range: treat [0, 1] data as unit range, anything else as 8-bit.
            scale = 255.0 if values.size and float(values.max()) <= 1.0 else 1.0
        elif mode in _SIXTEEN_BIT_MODES or (values.size and float(values.max()) > 255):
            scale = 255.0 / 65535.0
        else:
            scale = 1.0
        grey = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    # P, PA, L, LA, 1, CMYK, YCbCr, LAB, HSV, RGBA, RGBX: PIL converts directly; alpha is dropped (official rule).
    return image.convert("RGB")


# What PIL opens for one image (a local path, read lazily, or an object's bytes) and its size; or why there is none.
ImageSource = tuple[str | IO[bytes], int] | DecodedImage


def open_image_source(path: str) -> ImageSource:
    """What PIL should open for a local path or an object URI, and its size; a reject when there is nothing to open.

    A local file is opened by path, as PIL reads it lazily (the header before any pixels). An object is fetched
    whole into memory without asking for its size first: PIL reads in many small pieces, a ranged request per piece
    would dominate the time, and a separate metadata request would add a round trip per image. Safe to call from
    threads, which is how `prefetch_image_sources` overlaps the GETs of a batch.
    """
    try:
        where = location(path)
        if where.is_remote:
            data = where.read_bytes()
            if not data:
                return _reject(REASON_EMPTY, f"{path}: file is empty (0 bytes)")
            return io.BytesIO(data), len(data)
        info = where.info()
    except StorageError as error:
        return _reject(REASON_MISSING, str(error))
    if info.type != pafs.FileType.File:
        what = (
            "a directory, not a file" if info.type == pafs.FileType.Directory else "No such file or directory"
        )
        return _reject(REASON_MISSING, f"{path}: {what}")
    if info.size == 0:
        return _reject(REASON_EMPTY, f"{path}: file is empty (0 bytes)")
    return where.path, int(info.size)


def prefetch_image_sources(
    paths: list[str | None], pool: ThreadPoolExecutor
) -> list[Future[ImageSource] | None]:
    """Start fetching every object URI in `paths` on `pool`; None for local paths and missing ones.

    An object store answers each GET after a round trip (tens of ms to S3), while decoding one image takes about as
    long: fetching a batch's objects concurrently, in order, lets the decoder work on image i while i+1.. arrive.
    """
    return [pool.submit(open_image_source, path) if path and is_uri(path) else None for path in paths]


def decode_image(
    path: str | os.PathLike[str] | None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    num_crops: int = 16,
    crop_size: int = 336,
    source: ImageSource | None = None,
) -> DecodedImage:
    """Open, check and load one image (a local path or an object URI) as RGB, or say why it cannot be used.

    `source` is what `open_image_source(path)` returned when the caller fetched it ahead (see
    `prefetch_image_sources`). Never raises for a bad file or an unreachable object: either is a reject with a reason.
    """
    if is_missing(path) or str(path).strip() == "":
        return _reject(REASON_NO_PATH, "the row has no local_image_path")
    path = os.fspath(path)
    opened = source if source is not None else open_image_source(path)
    if isinstance(opened, DecodedImage):
        return opened
    source, size = opened
    mode: str | None = None
    try:
        with warnings.catch_warnings():
            # PIL's own bomb check warns above its global limit; ours is explicit and per call.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source) as image:
                mode = image.mode
                width, height = image.size
                if width < 1 or height < 1:
                    return _reject(
                        REASON_UNREADABLE, f"{path}: header declares {width}×{height} pixels", mode
                    )
                if width * height > max_pixels:
                    return _reject(
                        REASON_TOO_MANY_PIXELS,
                        f"{path}: {width}×{height} = {width * height} pixels, over the limit of {max_pixels}",
                        mode,
                    )
                _, new_short = hd_resized_extent(width, height, num_crops, crop_size)
                if new_short < 1:
                    return _reject(
                        REASON_ASPECT,
                        f"{path}: {width}×{height} would resize to 0 pixels on its short side "
                        f"(num_crops={num_crops}, crop_size={crop_size})",
                        mode,
                    )
                image.seek(0)  # animated GIF/WebP/APNG: the first frame, as PIL's default load gives
                image.load()
                # Loaded pixels outlive the file handle that the context manager closes, so no copy is needed.
                rgb = _to_rgb(image)
    except Image.DecompressionBombError as error:
        return _reject(REASON_TOO_MANY_PIXELS, f"{path}: {error}", mode)
    except UnidentifiedImageError:
        return _reject(REASON_UNREADABLE, f"{path}: not a recognised image format ({size} bytes)", mode)
    except (ValueError, NotImplementedError, KeyError) as error:
        # PIL raises these for modes and codecs it opens but cannot convert (e.g. exotic TIFF layouts).
        return _reject(REASON_UNSUPPORTED_MODE, f"{path}: mode {mode}: {error}", mode)
    except (OSError, SyntaxError, EOFError, MemoryError) as error:
        return _reject(REASON_TRUNCATED, f"{path}: {error}", mode)
    except Exception as error:  # noqa: BLE001 - PIL plugins raise assorted types (struct.error, ...) on bad bytes
        return _reject(REASON_DECODE_ERROR, f"{path}: {type(error).__name__}: {error}", mode)
    return DecodedImage(image=rgb, original_mode=mode)
