"""Reversible integer 5/3 lifting (ITU-T T.800 Annex F.3.8, F.4.8) and the
reversible colour transform (T.800 Annex G.2), vectorised with numpy (the inverse with numba).

Signals are split at even (low-pass) and odd (high-pass) positions, boundary
handling is whole-sample symmetric extension (x[-1] = x[1], x[n] = x[n-2]).
A two-dimensional level filters the columns (vertical pass) first, then the
rows (horizontal pass); the inverse undoes them in reverse order. All
arithmetic is on int32 with floor division (arithmetic shifts).
"""

from __future__ import annotations

import numba as nb
import numpy as np

# Subband orientation order inside one decomposition level.
HL, LH, HH = 0, 1, 2


def _update(d: np.ndarray, ne: int, axis: int) -> np.ndarray:
    """The update term floor((d[i-1] + d[i] + 2) / 4) for the ``ne`` low-pass
    positions along ``axis``, with d[-1] = d[0] and d[no] = d[no-1]."""
    no = d.shape[axis]
    sl = [slice(None)] * d.ndim

    def at(sx: slice) -> tuple:
        sl[axis] = sx
        return tuple(sl)

    shape = list(d.shape)
    shape[axis] = ne
    acc = np.empty(shape, dtype=np.int32)
    acc[at(slice(1, ne))] = d[at(slice(0, ne - 1))]
    acc[at(slice(0, 1))] = d[at(slice(0, 1))]
    acc[at(slice(0, no))] += d
    if ne > no:
        acc[at(slice(no, ne))] += d[at(slice(no - 1, no))]
    acc += 2
    acc >>= 2
    return acc


def _split(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Forward 1-D 5/3 lifting along ``axis``: return (low, high)."""
    n = x.shape[axis]
    if n < 2:
        return x.copy(), np.take(x, [], axis=axis)
    sl = [slice(None)] * x.ndim

    def at(s: slice) -> tuple:
        sl[axis] = s
        return tuple(sl)

    even = x[at(slice(0, None, 2))]
    odd = x[at(slice(1, None, 2))]
    ne, no = even.shape[axis], odd.shape[axis]
    # d[i] = x[2i+1] - floor((x[2i] + x[2i+2]) / 2), x[n] mirrored to x[n-2]
    right = even[at(slice(1, no + 1))]
    if ne == no:
        right = np.concatenate([right, even[at(slice(no - 1, no))]], axis=axis)
    d = odd - ((even[at(slice(0, no))] + right) >> 1)
    # s[i] = x[2i] + floor((d[i-1] + d[i] + 2) / 4)
    return even + _update(d, ne, axis), d


def _merge(s: np.ndarray, d: np.ndarray, axis: int) -> np.ndarray:
    """Inverse of :func:`_split`."""
    ne, no = s.shape[axis], d.shape[axis]
    if no == 0:
        return s.copy()
    sl = [slice(None)] * s.ndim

    def at(sx: slice) -> tuple:
        sl[axis] = sx
        return tuple(sl)

    even = s - _update(d, ne, axis)
    right = even[at(slice(1, no + 1))]
    if ne == no:
        right = np.concatenate([right, even[at(slice(no - 1, no))]], axis=axis)
    odd = d + ((even[at(slice(0, no))] + right) >> 1)
    shape = list(s.shape)
    shape[axis] = ne + no
    out = np.empty(shape, dtype=np.int32)
    out[at(slice(0, None, 2))] = even
    out[at(slice(1, None, 2))] = odd
    return out


def forward_level(x: np.ndarray) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """One 2-D level: return LL and the (HL, LH, HH) detail bands.

    HL is low-pass vertically, high-pass horizontally; LH the converse.
    """
    lo, hi = _split_fast(x, 0)
    ll, hl = _split_fast(lo, 1)
    lh, hh = _split_fast(hi, 1)
    return ll, (hl, lh, hh)


def inverse_level(ll: np.ndarray, bands: tuple[np.ndarray, np.ndarray, np.ndarray]) -> np.ndarray:
    hl, lh, hh = bands
    lo = _merge_fast(ll, hl, 1)
    hi = _merge_fast(lh, hh, 1)
    return _merge_fast(lo, hi, 0)


def forward(x: np.ndarray, levels: int) -> tuple[np.ndarray, list]:
    """Multi-level transform of a 2-D int32 plane.

    Returns the coarsest LL and ``details[k]`` = (HL, LH, HH) of level k+1
    (``details[0]`` is the finest).
    """
    ll = np.ascontiguousarray(x, dtype=np.int32)
    details = []
    for _ in range(levels):
        ll, bands = forward_level(ll)
        details.append(tuple(np.ascontiguousarray(b) for b in bands))
    return np.ascontiguousarray(ll), details


def inverse(ll: np.ndarray, details: list, stop: int = 0) -> np.ndarray:
    """Rebuild LL at level ``stop`` from the coarsest LL and ``details``
    (``details[k]`` of level k+1; only entries k >= stop are used)."""
    for k in range(len(details) - 1, stop - 1, -1):
        ll = inverse_level(ll, details[k])
    return ll


def band_shapes(rows: int, cols: int, levels: int) -> list[tuple[int, int]]:
    """LL shape at every level 0..levels (ceil halving)."""
    shapes = [(rows, cols)]
    for _ in range(levels):
        r, c = shapes[-1]
        shapes.append(((r + 1) // 2, (c + 1) // 2))
    return shapes


def rct_forward(rgb: np.ndarray) -> np.ndarray:
    """T.800 G.2: Y = floor((R + 2G + B) / 4), Cb = B - G, Cr = R - G.
    ``rgb`` is int32 with samples on the last axis."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    out = np.empty(rgb.shape, dtype=np.int32)
    out[..., 0] = (r + 2 * g + b) >> 2
    out[..., 1] = b - g
    out[..., 2] = r - g
    return out


def rct_inverse(ycc: np.ndarray) -> np.ndarray:
    y, cb, cr = ycc[..., 0], ycc[..., 1], ycc[..., 2]
    out = np.empty(ycc.shape, dtype=np.int32)
    g = y - ((cb + cr) >> 2)
    out[..., 1] = g
    out[..., 0] = cr + g
    out[..., 2] = cb + g
    return out


def lowpass(planes: np.ndarray, level: int, rct: bool) -> np.ndarray:
    """Reference level-``level`` image of int32 ``planes`` shaped
    (frames, rows, cols, samples): the LL band of every plane, the inverse
    RCT applied when ``rct``. Not clipped."""
    if rct:
        planes = rct_forward(planes)
    f, r, c, s = planes.shape
    rr, cc = band_shapes(r, c, level)[-1]
    out = np.empty((f, rr, cc, s), dtype=np.int32)
    for i in range(f):
        for j in range(s):
            out[i, :, :, j] = forward(planes[i, :, :, j], level)[0]
    return rct_inverse(out) if rct else out


# ---------------------------------------------------------------- numba


@nb.njit(cache=True, nogil=True, boundscheck=False)
def _split_rows(x, lo, hi):
    """:func:`_split` along axis 1 into ``lo``, ``hi``; at least 2 columns."""
    rows, n = x.shape
    ne = lo.shape[1]
    no = hi.shape[1]
    for r in range(rows):
        for i in range(no):
            right = x[r, 2 * i + 2] if 2 * i + 2 < n else x[r, 2 * i]  # x[n] = x[n-2]
            hi[r, i] = x[r, 2 * i + 1] - ((x[r, 2 * i] + right) >> 1)
        for i in range(ne):
            dl = hi[r, i - 1] if i > 0 else hi[r, 0]
            dr = hi[r, i] if i < no else hi[r, no - 1]
            lo[r, i] = x[r, 2 * i] + ((dl + dr + 2) >> 2)


@nb.njit(cache=True, nogil=True, boundscheck=False)
def _split_cols(x, lo, hi):
    """:func:`_split` along axis 0 into ``lo``, ``hi``; at least 2 rows."""
    n, cols = x.shape
    ne = lo.shape[0]
    no = hi.shape[0]
    for i in range(no):
        ir = 2 * i + 2 if 2 * i + 2 < n else 2 * i
        for c in range(cols):
            hi[i, c] = x[2 * i + 1, c] - ((x[2 * i, c] + x[ir, c]) >> 1)
    for i in range(ne):
        il = i - 1 if i > 0 else 0
        ir = i if i < no else no - 1
        for c in range(cols):
            lo[i, c] = x[2 * i, c] + ((hi[il, c] + hi[ir, c] + 2) >> 2)


def _split_fast(x: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    n = x.shape[axis]
    if n < 2 or x.size == 0:
        return _split(x, axis)
    x = np.ascontiguousarray(x, dtype=np.int32)
    lo_shape, hi_shape = list(x.shape), list(x.shape)
    lo_shape[axis], hi_shape[axis] = (n + 1) // 2, n // 2
    lo, hi = np.empty(lo_shape, np.int32), np.empty(hi_shape, np.int32)
    (_split_rows if axis == 1 else _split_cols)(x, lo, hi)
    return lo, hi


@nb.njit(cache=True, nogil=True, boundscheck=False)
def _merge_rows(s, d, out):
    """:func:`_merge` along axis 1 into ``out`` (rows, ne + no), no >= 1."""
    rows, ne = s.shape
    no = d.shape[1]
    for r in range(rows):
        for i in range(ne):
            dl = d[r, i - 1] if i > 0 else d[r, 0]
            dr = d[r, i] if i < no else d[r, no - 1]
            out[r, 2 * i] = s[r, i] - ((dl + dr + 2) >> 2)
        for i in range(no):
            right = out[r, 2 * i + 2] if i + 1 < ne else out[r, 2 * (no - 1)]
            out[r, 2 * i + 1] = d[r, i] + ((out[r, 2 * i] + right) >> 1)


@nb.njit(cache=True, nogil=True, boundscheck=False)
def _merge_cols(s, d, out):
    """:func:`_merge` along axis 0 into ``out`` (ne + no, cols), no >= 1."""
    ne, cols = s.shape
    no = d.shape[0]
    for i in range(ne):
        il = i - 1 if i > 0 else 0
        ir = i if i < no else no - 1
        for c in range(cols):
            out[2 * i, c] = s[i, c] - ((d[il, c] + d[ir, c] + 2) >> 2)
    for i in range(no):
        er = 2 * i + 2 if i + 1 < ne else 2 * (no - 1)
        for c in range(cols):
            out[2 * i + 1, c] = d[i, c] + ((out[2 * i, c] + out[er, c]) >> 1)


def _merge_fast(s: np.ndarray, d: np.ndarray, axis: int) -> np.ndarray:
    if d.shape[axis] == 0 or s.size == 0:
        return _merge(s, d, axis)
    shape = list(s.shape)
    shape[axis] += d.shape[axis]
    out = np.empty(shape, np.int32)
    (_merge_rows if axis == 1 else _merge_cols)(s, d, out)
    return out
