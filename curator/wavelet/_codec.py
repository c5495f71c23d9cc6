"""encode / decode / info: planes, chunks and the lossy path."""

from __future__ import annotations

import numpy as np

from . import _container as fmt
from . import _entropy as ent
from . import _lifting as lift
from . import _values
from ._errors import CorruptError, InvalidInputError, TruncatedError

WAVELET_LOSSY = "bior4.4"
RECON_OFFSET = 0.375  # dequantisation point inside a quantiser interval
_EMPTY = np.zeros((0, 0), np.int32)
CHUNK_MANTISSA = 1  # chunk flag: the top mantissa bits are modelled
CHUNK_TABLES = 2  # chunk flag (coarsest chunk): value tables of the frame's samples
MANTISSA_MODE_GAIN = 0.1  # estimated saving that turns it on


def default_levels(rows: int, cols: int) -> int:
    """Fewest levels that bring the coarsest image to 64 pixels or less."""
    n = 0
    while max(rows, cols) > 64:
        rows, cols = (rows + 1) // 2, (cols + 1) // 2
        n += 1
    return n


# ---------------------------------------------------------------- chunks


def _other(shape, parent, cross):
    """Parent/cross activity of a band: 2*|parent(i>>1, j>>1)| (indices
    clamped to the parent band) plus the magnitudes of the co-located
    coefficients of the bands coded before it at this level."""
    oth = np.empty(shape, np.int32)
    par = _EMPTY if parent is None else parent
    c1 = cross[0] if len(cross) > 0 else _EMPTY
    c2 = cross[1] if len(cross) > 1 else _EMPTY
    ent.other_activity(oth, par, c1, c2, len(cross))
    return oth


def _mantissa_gain(items) -> float:
    """Estimated share of the mantissa bits that mantissa mode would save:
    1 - H(top mantissa bits | band, class) / their count, from a zero-order
    histogram of every fourth row of the detail bands."""
    hist = np.zeros(3 * 64 * 16, np.int64)
    bits = 0
    for band, group, predict, _ in items:
        if not predict:
            bits += ent.mantissa_histogram(band, group % 3, hist)
    if bits == 0:
        return 0.0
    joint = hist.reshape(-1, 16).astype(np.float64)
    rows = joint.sum(1, keepdims=True)
    nz = joint > 0
    h = -(joint[nz] * np.log2((joint / np.maximum(rows, 1))[nz])).sum()
    return 1.0 - h / bits


def _encode_chunk(items, tables: bytes = b"") -> bytes:
    """``items``: (band, group, predict, oth) in coding order; ``tables``:
    the packed value tables (coarsest chunk only)."""
    n = sum(b.size for b, *_ in items)
    width = max((b.shape[1] for b, *_ in items), default=0)
    size = 2 * n + 40 * width + 1024
    gain = _mantissa_gain(items)
    mant = bool(gain > MANTISSA_MODE_GAIN)
    while True:
        st = ent.new_encoder()
        model = ent.new_tables(mant)
        ac = np.empty(size, np.uint8)
        raw = np.empty(4 * n + 16, np.uint8)
        overflow = False
        for band, group, predict, oth in items:
            mp = np.zeros((band.shape[0] + 2, band.shape[1] + 3), np.int32)
            if ent.encode_band(st, ac, raw, *model, band, mp, oth, group, predict, mant):
                overflow = True
                break
        if not overflow:
            break
        size *= 4
    na, nr = ent.finish(st, ac, raw)
    flags = (CHUNK_MANTISSA if mant else 0) | (CHUNK_TABLES if tables else 0)
    head = bytes([flags]) + tables + int(na - 1).to_bytes(4, "little")
    return b"".join([head, ac[1:na].tobytes(), raw[:nr].tobytes()])


class _ChunkDecoder:
    def __init__(self, blob: memoryview, where: str, hdr: fmt.WaveletInfo | None = None):
        """``hdr``: given for a coarsest chunk, which may hold value tables."""
        if len(blob) < 5:
            raise CorruptError(f"{where}: chunk shorter than its head")
        known = CHUNK_MANTISSA | (CHUNK_TABLES if hdr is not None and not hdr.lossy else 0)
        if blob[0] & ~known:
            raise CorruptError(f"{where}: unknown chunk flags {blob[0]:#x}")
        self.mant = bool(blob[0] & CHUNK_MANTISSA)
        pos = 1
        self.tables = [None] * (hdr.samples if hdr is not None else 0)
        if blob[0] & CHUNK_TABLES:
            lo, hi = _range(hdr.bits_stored, hdr.signed)
            self.tables, pos = _values.unpack(blob, pos, hdr.samples, lo, hi, where)
        if len(blob) < pos + 4:
            raise CorruptError(f"{where}: chunk shorter than its head")
        na = int.from_bytes(blob[pos : pos + 4], "little")
        pos += 4
        if na > len(blob) - pos:
            raise CorruptError(f"{where}: range-coder length {na} exceeds the chunk")
        buf = np.frombuffer(blob, np.uint8)
        self.ac = buf[pos : pos + na]
        self.raw = buf[pos + na :]
        self.st = ent.new_decoder(self.ac)
        self.model = ent.new_tables(self.mant, packed=True)
        self.where = where

    def band(self, shape, group, predict, oth) -> tuple[np.ndarray, np.ndarray]:
        band = np.empty(shape, np.int32)
        mp = np.zeros((shape[0] + 2, shape[1] + 3), np.int32)
        if ent.decode_band(self.st, self.ac, self.raw, *self.model, band, mp, oth, group, predict, self.mant):
            raise CorruptError(f"{self.where}: entropy-coded data overrun")
        return band, mp[2:, 2:-1]


def _detail_shapes(shape, lossy):
    r, c = shape
    lr, lc = (r + 1) // 2, (c + 1) // 2
    if lossy:
        return [(lr, lc)] * 3
    return [(lr, c // 2), (r // 2, lc), (r // 2, c // 2)]


def _detail_items(bands, mags, parents, has_parent):
    """Coding items of one level's (HL, LH, HH) of one sample."""
    g = 3 if has_parent else 0
    items = []
    for o in range(3):
        parent = parents[o] if parents is not None else None
        oth = _other(bands[o].shape, parent, mags[:o])
        items.append((bands[o], g + o, False, oth))
    return items


def _encode_planes(coefs, levels, frames, samples, tables) -> list[list[bytes]]:
    """``coefs[f][s]`` = (LL, details), ``tables[f][s]`` value table or
    None -> ``blobs[f][level]``."""
    blobs = []
    for f in range(frames):
        per = [None] * (levels + 1)
        per[levels] = _encode_chunk(
            [(coefs[f][s][0], ent.GROUP_LL, True, np.zeros(coefs[f][s][0].shape, np.int32)) for s in range(samples)],
            _values.pack(tables[f]) if any(t is not None for t in tables[f]) else b"",
        )
        for k in range(levels - 1, -1, -1):
            items = []
            for s in range(samples):
                details = coefs[f][s][1]
                mags = [np.abs(b) for b in details[k]]
                parents = [np.abs(b) for b in details[k + 1]] if k + 1 < levels else None
                items += _detail_items(details[k], mags, parents, k + 1 < levels)
            per[k] = _encode_chunk(items)
        blobs.append(per)
    return blobs


def _decode_planes(data, hdr: fmt.WaveletInfo, level: int):
    """Decode every frame's chunks down to ``level``: return
    (coefs, tables) with ``coefs[f][s]`` = (coarsest LL, detail bands
    decoded so far) and ``tables[f][s]`` the value table or None."""
    shapes = lift.band_shapes(hdr.rows, hdr.cols, hdr.levels)
    out, tables = [], []
    for f in range(hdr.frames):
        blob = fmt.chunk_bytes(data, hdr.chunk(f, hdr.levels))
        dec = _ChunkDecoder(blob, f"frame {f} level {hdr.levels}", hdr)
        tables.append(dec.tables)
        lls = []
        for s in range(hdr.samples):
            shape = shapes[hdr.levels]
            ll, _ = dec.band(shape, ent.GROUP_LL, True, np.zeros(shape, np.int32))
            lls.append(ll)
        details = [[None] * hdr.levels for _ in range(hdr.samples)]
        mags = [[None] * hdr.levels for _ in range(hdr.samples)]
        for k in range(hdr.levels - 1, level - 1, -1):
            blob = fmt.chunk_bytes(data, hdr.chunk(f, k))
            dec = _ChunkDecoder(blob, f"frame {f} level {k}")
            for s in range(hdr.samples):
                has_parent = k + 1 < hdr.levels
                g = 3 if has_parent else 0
                bands, bmags = [], []
                for o, shape in enumerate(_detail_shapes(shapes[k], hdr.lossy)):
                    parent = mags[s][k + 1][o] if has_parent else None
                    oth = _other(shape, parent, bmags)
                    b, m = dec.band(shape, g + o, False, oth)
                    bands.append(b)
                    bmags.append(m)
                details[s][k] = tuple(bands)
                mags[s][k] = bmags
        out.append([(lls[s], details[s]) for s in range(hdr.samples)])
    return out, tables


# ---------------------------------------------------------------- input


def _normalise(pixels, frames, bits_stored):
    a = np.asarray(pixels)
    if a.dtype == np.bool_:
        a = a.astype(np.uint8)
        bits_stored = bits_stored or 1
    if a.dtype.kind not in "iu":
        raise InvalidInputError(f"pixels must be an integer array, not {a.dtype}")
    frame_axis = bool(frames) or a.ndim == 4
    want = (3, 4) if frame_axis else (2, 3)
    if a.ndim not in want:
        raise InvalidInputError(
            f"pixels shaped {a.shape}: expected (rows, cols[, samples])"
            + (" with frames=True: (frames, rows, cols[, samples])" if frame_axis else "")
        )
    sample_axis = a.ndim == want[1]
    signed = a.dtype.kind == "i"
    itemsize = a.dtype.itemsize
    if bits_stored is None:
        if itemsize > 2:
            raise InvalidInputError(f"{a.dtype} pixels need an explicit bits_stored (1..16)")
        bits_stored = 8 * itemsize
    bits_stored = int(bits_stored)
    if not 1 <= bits_stored <= 16:
        raise InvalidInputError(f"bits_stored {bits_stored}: only 1..16 are supported")
    if bits_stored > 8 * itemsize:
        raise InvalidInputError(f"bits_stored {bits_stored} exceeds the {a.dtype} container")
    planes = a.astype(np.int32) if a.dtype.isnative else a.astype(a.dtype.newbyteorder("=")).astype(np.int32)
    if not frame_axis:
        planes = planes[None]
    if not sample_axis:
        planes = planes[..., None]
    if 0 in planes.shape:
        raise InvalidInputError(f"empty image {a.shape}")
    if planes.shape[-1] > 255:
        raise InvalidInputError(f"{planes.shape[-1]} samples per pixel (at most 255)")
    lo, hi = _range(bits_stored, signed)
    if planes.size and (int(planes.min()) < lo or int(planes.max()) > hi):
        raise InvalidInputError(
            f"values {int(planes.min())}..{int(planes.max())} outside the {bits_stored}-bit "
            f"{'signed' if signed else 'unsigned'} range {lo}..{hi}"
        )
    return planes, frame_axis, sample_axis, signed, itemsize, bits_stored


def _range(bits, signed):
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


# ---------------------------------------------------------------- public


def encode(
    pixels,
    *,
    levels: int | None = None,
    bits_stored: int | None = None,
    frames: bool = False,
    rct: bool | None = None,
    lossy_psnr: float | None = None,
    value_tables: bool = True,
) -> bytes:
    planes, frame_axis, sample_axis, signed, itemsize, bits = _normalise(pixels, frames, bits_stored)
    nf, rows, cols, ns = planes.shape
    if levels is None:
        levels = default_levels(rows, cols)
        if lossy_psnr is not None:  # the 9/7 needs a few levels to decorrelate
            while levels < 5 and min(rows, cols) >> (levels + 1) >= 8:
                levels += 1
    if not 0 <= int(levels) <= 30:
        raise InvalidInputError(f"levels {levels}: 0..30")
    levels = int(levels)
    if rct is None:
        rct = ns == 3
    if rct and ns != 3:
        raise InvalidInputError("rct needs 3 samples per pixel")
    tables = [[None] * ns for _ in range(nf)]
    if lossy_psnr is None and value_tables:
        for f in range(nf):
            for s in range(ns):
                t = _values.choose(planes[f, :, :, s])
                if t is not None:
                    planes[f, :, :, s] = t.indices(planes[f, :, :, s])
                    tables[f][s] = t
    if rct:
        planes = lift.rct_forward(planes)
    flags = (
        (fmt.FLAG_SIGNED if signed else 0)
        | (fmt.FLAG_RCT if rct else 0)
        | (fmt.FLAG_FRAME_AXIS if frame_axis else 0)
        | (fmt.FLAG_SAMPLE_AXIS if sample_axis else 0)
    )
    fields = dict(
        rows=rows, cols=cols, frames=nf, samples=ns, bits_stored=bits, itemsize=itemsize, levels=levels,
        quant_step=0.0, target_psnr=0.0, recon_offset=0.0,
    )  # fmt: skip
    if lossy_psnr is None:
        coefs = [[lift.forward(planes[f, :, :, s], levels) for s in range(ns)] for f in range(nf)]
    else:
        from . import _lossy

        if not 10 <= float(lossy_psnr) <= 200:
            raise InvalidInputError(f"lossy_psnr {lossy_psnr}: 10..200 dB")
        flags |= fmt.FLAG_LOSSY
        coefs, step = _lossy.quantise(planes, levels, rct, bits, signed, float(lossy_psnr), RECON_OFFSET)
        fields.update(quant_step=step, target_psnr=float(lossy_psnr), recon_offset=RECON_OFFSET)
    fields["flags"] = flags
    return fmt.pack(fields, _encode_planes(coefs, levels, nf, ns, tables))


def info(data) -> fmt.WaveletInfo:
    """Header and level index of ``data`` (a whole file or any prefix that
    holds the header and index: ``WaveletInfo.index_end`` bytes)."""
    return fmt.parse(data)


def decode(data, level: int = 0) -> np.ndarray:
    hdr = fmt.parse(data)
    if not 0 <= level <= hdr.levels:
        raise InvalidInputError(f"level {level}: this file has levels 0..{hdr.levels}")
    if len(data) < hdr.level_end(level):
        raise TruncatedError(f"{len(data)} bytes: level {level} needs the first {hdr.level_end(level)} bytes")
    coefs, tables = _decode_planes(data, hdr, level)
    lo, hi = _range(hdr.bits_stored, hdr.signed)
    if not hdr.lossy and hdr.frames == 1 and hdr.samples == 1:
        # one plane (most images): inverse transform, value table, range
        # check and conversion to the output dtype in one pass
        ll, details = coefs[0][0]
        plane = lift.inverse(ll, details, level)
        out = np.empty(plane.shape, np.dtype(hdr.dtype))
        err = _values.to_output(plane, tables[0][0], level == 0, lo, hi, out)
        if err == _values.OUT_BAD_INDEX:
            raise CorruptError("decoded indices outside the value table")
        if err == _values.OUT_BAD_VALUE:
            raise CorruptError("decoded values outside bits_stored")
        if hdr.frame_axis:
            out = out[None]
        return out[..., None] if hdr.sample_axis else out
    if hdr.lossy:
        from . import _lossy

        planes = _lossy.reconstruct(coefs, hdr, level)
    else:
        shape = lift.band_shapes(hdr.rows, hdr.cols, level)[-1]
        planes = np.empty((hdr.frames, *shape, hdr.samples), np.int32)
        for f in range(hdr.frames):
            for s in range(hdr.samples):
                ll, details = coefs[f][s]
                planes[f, :, :, s] = lift.inverse(ll, details, level)
        if hdr.rct:
            planes = lift.rct_inverse(planes)
        for f in range(hdr.frames):
            for s, t in enumerate(tables[f]):
                if t is not None:
                    planes[f, :, :, s] = t.lookup(planes[f, :, :, s], exact=level == 0)
    if hdr.lossy or level:
        np.clip(planes, lo, hi, out=planes)
    elif planes.min(initial=0) < lo or planes.max(initial=0) > hi:
        raise CorruptError("decoded values outside bits_stored")
    out = planes.astype(np.dtype(hdr.dtype))
    if not hdr.frame_axis:
        out = out[0]
    if not hdr.sample_axis:
        out = out[..., 0]
    return out

