"""Thumbnails: a small 8-bit PNG of an image's first frame, windowed for
display.

Grayscale images take the default window of their header (Window Center
and Width, after the Modality LUT's rescale: PS3.3 C.11.2.1.2), else a
robust one (the 1st to 99th percentile of the pixels); MONOCHROME1 is
inverted. Colour images are scaled to 8 bits. The pixels come from a
coarse level of the wavelet file, so no image is resized twice.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

MAX_SIDE = 128


def _first_number(value: object) -> float | None:
    """The first value of a (possibly multi-valued) numeric attribute."""
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0] if len(value) else None
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def window(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """Grayscale pixels as uint8 for display."""
    values = pixels.astype(np.float64)
    slope = _first_number(ds.get("RescaleSlope")) or 1.0
    intercept = _first_number(ds.get("RescaleIntercept")) or 0.0
    values = values * slope + intercept
    center, width = _first_number(ds.get("WindowCenter")), _first_number(ds.get("WindowWidth"))
    if center is None or not width or width <= 1:
        low, high = np.percentile(values, (1, 99)) if values.size else (0.0, 1.0)
        if high <= low:
            high = low + 1
    else:
        low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    out = np.clip((values - low) / (high - low), 0, 1) * 255
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = 255 - out
    return np.round(out).astype(np.uint8)


def to_8bit_colour(pixels: np.ndarray, bits_stored: int) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    shift = max(0, bits_stored - 8)
    return np.clip(pixels.astype(np.int64) >> shift, 0, 255).astype(np.uint8)


def png(image: np.ndarray) -> bytes:
    """A PNG (8-bit grayscale or RGB) of a (rows, cols) or (rows, cols, 3) uint8 array."""
    rows, cols = image.shape[:2]
    colour = 2 if image.ndim == 3 else 0
    raw = np.ascontiguousarray(image).reshape(rows, -1)
    scanlines = np.hstack([np.zeros((rows, 1), np.uint8), raw]).tobytes()  # filter type 0 per line

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", cols, rows, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(scanlines, 6)) + \
        chunk(b"IEND", b"")


def thumbnail_level(rows: int, cols: int, levels: int) -> int:
    """The coarsest level needed for a thumbnail of at most MAX_SIDE pixels."""
    level, side = 0, max(rows, cols)
    while side > MAX_SIDE and level < levels:
        side = (side + 1) // 2
        level += 1
    return level


def thumbnail(frame: np.ndarray, ds: Dataset, bits_stored: int) -> bytes:
    """The PNG of one frame, (rows, cols) or (rows, cols, samples),
    subsampled to MAX_SIDE if the wavelet level left it larger."""
    step = max(1, -(-max(frame.shape[:2]) // MAX_SIDE))
    frame = frame[::step, ::step]
    if frame.ndim == 3 and frame.shape[2] == 3:
        return png(to_8bit_colour(frame, bits_stored))
    if frame.ndim == 3:
        frame = frame[..., 0]
    return png(window(frame, ds))
