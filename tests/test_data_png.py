"""The PNG writer and image grids (read back with a minimal decoder)."""

from __future__ import annotations

import struct
import zlib

import numpy as np

from pcir.data.png import encode_png, image_grid


def decode_png(data: bytes) -> np.ndarray:
    """Enough of PNG to read what encode_png writes (8-bit, filter 0)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, w, h = 8, b"", 0, 0
    color = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        tag, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(tag + body) & 0xFFFFFFFF
        if tag == b"IHDR":
            w, h, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8
        elif tag == b"IDAT":
            idat += body
        pos += 12 + length
    chans = 3 if color == 2 else 1
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * chans)
    assert (raw[:, 0] == 0).all()
    return raw[:, 1:].reshape(h, w, chans).squeeze(-1) if chans == 1 else raw[:, 1:].reshape(h, w, 3)


def test_png_round_trip_gray_and_rgb():
    rng = np.random.default_rng(0)
    for img in (rng.integers(0, 256, (5, 7)), rng.integers(0, 256, (4, 3, 3))):
        np.testing.assert_array_equal(decode_png(encode_png(img)), img)


def test_grid_places_scaled_images():
    imgs = np.array([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]])  # three 2x2 binary images
    g = image_grid(imgs, (2, 2), max_value=1, pad=1, scale=3)
    assert g.shape == (2 * (6 + 1) + 1, 2 * (6 + 1) + 1)
    np.testing.assert_array_equal(g[1:7, 1:7], np.kron([[0, 255], [255, 0]], np.ones((3, 3))))
    assert (g[1:7, 8:14] == 255).all() and (g[8:14, 1:7] == 0).all()
    assert (g[8:14, 8:14] == 255).all()  # the empty fourth cell is background
    assert image_grid(np.zeros((1, 28 * 28)), (28, 28), 255).shape == (28 * 3 + 4, 28 * 3 + 4)
