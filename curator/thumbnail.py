"""Thumbnails: a small 8-bit PNG of an image's first frame, as a viewer
shows it by default.

Grayscale images (PS3.3 C.11, pydicom.pixels): the Modality LUT
(Rescale Slope and Intercept, or the Modality LUT Sequence), then the
header's first window (Window Center and Width, VOI LUT Function LINEAR,
LINEAR_EXACT or SIGMOID), else the first VOI LUT Sequence item, else a
robust window (the 1st to 99th percentile); MONOCHROME1 is inverted.
PALETTE COLOR images go through their palette; other colour images are
scaled to 8 bits. The pixels come from a coarse level of the wavelet file,
so no image is resized twice. :func:`read_png` reads back the PNGs made
here (``pacs webcache verify``).
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

MAX_SIDE = 128
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class PngError(ValueError):
    """A PNG of the web cache that does not read back."""


def _first_number(value: object) -> float | None:
    """The first value of a (possibly multi-valued) numeric attribute."""
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0] if len(value) else None
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def _lut_bits(item: Dataset) -> int:
    """Bits of a LUT's output (third value of its LUT Descriptor)."""
    descriptor = item.get("LUTDescriptor")
    bits = int(descriptor[2]) if descriptor is not None and len(descriptor) > 2 else 0
    return bits if 1 <= bits <= 16 else 16


def window(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """Grayscale pixels as uint8 for display."""
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    center, width = _first_number(ds.get("WindowCenter")), _first_number(ds.get("WindowWidth"))
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    voi_luts = ds.get("VOILUTSequence")
    if center is not None and width is not None and width > (1 if function == "LINEAR" else 0):
        if function == "SIGMOID":  # PS3.3 C.11.2.1.3.1
            out = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
        elif function == "LINEAR_EXACT":  # C.11.2.1.3.2
            out = np.clip((values - (center - width / 2)) / width, 0, 1)
        else:  # LINEAR, C.11.2.1.2.1
            out = np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1)
    elif voi_luts:
        lut = np.asarray(apply_voi_lut(values.round().astype(np.int64), ds, prefer_lut=True), dtype=np.float64)
        out = np.clip(lut / ((1 << _lut_bits(voi_luts[0])) - 1), 0, 1)
    else:
        low, high = np.percentile(values, (1, 99)) if values.size else (0.0, 1.0)
        if high <= low:
            high = low + 1
        out = np.clip((values - low) / (high - low), 0, 1)
    out = out * 255
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        out = 255 - out
    return np.round(out).astype(np.uint8)


def palette(pixels: np.ndarray, ds: Dataset) -> np.ndarray:
    """PALETTE COLOR indices as 8-bit RGB through the image's palette
    (PS3.3 C.7.6.3.1.5)."""
    rgb = np.asarray(apply_color_lut(pixels, ds))
    bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    if bits not in (8, 16):  # some writers put 0 or the entry count here; judge by the values
        bits = 16 if rgb.max(initial=0) > 255 else 8
    return (rgb >> (bits - 8)).astype(np.uint8) if bits > 8 else rgb.astype(np.uint8)


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
    return PNG_MAGIC + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(scanlines, 6)) + \
        chunk(b"IEND", b"")


def read_png(data: bytes) -> np.ndarray:
    """The pixels of a PNG as :func:`png` writes it (8-bit grayscale or
    RGB, no interlace, filter type 0 on every line), every chunk's CRC and
    the image data's size checked; :class:`PngError` if it does not read."""
    if data[:8] != PNG_MAGIC:
        raise PngError("not a PNG (bad signature)")
    pos, header, idat, ended = 8, None, [], False
    while pos < len(data) and not ended:
        if pos + 12 > len(data):
            raise PngError(f"chunk at byte {pos} truncated")
        (length,) = struct.unpack_from(">I", data, pos)
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        if len(body) != length or pos + 12 + length > len(data):
            raise PngError(f"chunk {kind!r} at byte {pos} truncated")
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        if zlib.crc32(kind + body) != crc:
            raise PngError(f"chunk {kind!r} at byte {pos}: CRC mismatch")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        ended = kind == b"IEND"
        pos += 12 + length
    if header is None or not ended:
        raise PngError("no IHDR or no IEND chunk")
    cols, rows, depth, colour, _, _, interlace = header
    if depth != 8 or colour not in (0, 2) or interlace or not rows or not cols:
        raise PngError(f"not a thumbnail PNG: depth {depth}, colour type {colour}, interlace {interlace}")
    channels = 3 if colour == 2 else 1
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as exc:
        raise PngError(f"image data does not inflate: {exc}") from exc
    if len(raw) != rows * (1 + cols * channels):
        raise PngError(f"image data of {len(raw)} bytes for {rows} x {cols} x {channels}")
    lines = np.frombuffer(raw, np.uint8).reshape(rows, 1 + cols * channels)
    if lines[:, 0].any():
        raise PngError("a line filter other than none")
    pixels = lines[:, 1:].reshape(rows, cols, channels)
    return pixels[..., 0] if channels == 1 else pixels


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
    if str(ds.get("PhotometricInterpretation", "")).strip() == "PALETTE COLOR" and frame.ndim == 2:
        return png(palette(frame, ds))
    if frame.ndim == 3 and frame.shape[2] == 3:
        return png(to_8bit_colour(frame, bits_stored))
    if frame.ndim == 3:
        frame = frame[..., 0]
    return png(window(frame, ds))
