"""Decompression-bomb images for tests: huge in pixels, tiny on disk, written without holding their pixels."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


def write_pixel_bomb_png(path: Path, width: int, height: int) -> Path:
    """A valid 1-bit PNG of width×height pixels that is small on disk."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + (width + 7) // 8)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )
    return path
