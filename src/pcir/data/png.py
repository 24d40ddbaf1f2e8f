"""A tiny PNG writer (8-bit grayscale or RGB) and image grids; numpy and zlib only."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def encode_png(img: np.ndarray) -> bytes:
    """PNG bytes of a uint8 image (H, W) grayscale or (H, W, 3) RGB."""
    a = np.ascontiguousarray(img, dtype=np.uint8)
    if a.ndim == 2:
        color = 0
    elif a.ndim == 3 and a.shape[2] == 3:
        color = 2
    else:
        raise ValueError(f"image must be (H, W) or (H, W, 3), got {a.shape}")
    h, w = a.shape[:2]
    rows = a.reshape(h, -1)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter type 0 per row
    ihdr = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")


def image_grid(
    images: np.ndarray,
    image_shape: tuple[int, ...],
    max_value: float,
    cols: int | None = None,
    pad: int = 2,
    scale: int | None = None,
) -> np.ndarray:
    """Tile flat samples (N, prod(image_shape)) into one uint8 image, scaling 0..max_value to 0..255.

    Each image is enlarged ``scale`` times (nearest neighbour; default: to about 100 pixels a side)
    so that small images stay visible."""
    n = images.shape[0]
    cols = cols or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    imgs = (
        np.clip(np.asarray(images, dtype=np.float64) / max(max_value, 1e-12) * 255.0, 0, 255).round().astype(np.uint8)
    )
    imgs = imgs.reshape(n, *image_shape)
    scale = scale or max(1, 100 // max(image_shape[0], image_shape[1]))
    imgs = imgs.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = image_shape[0] * scale, image_shape[1] * scale
    chans = image_shape[2:] if len(image_shape) > 2 else ()
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, *chans), 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y : y + h, x : x + w] = imgs[i]
    return grid


def write_png(path: str | Path, img: np.ndarray) -> None:
    Path(path).write_bytes(encode_png(img))
