"""Value tables: a plane whose values use only part of their range is coded
as the indices of its distinct values (docs/wavelet-format.md 3.7).

Synthetic patterns, CTs with a padding value far below the body and
rescaled data use a few hundred of 4096 possible values: the wavelet then
codes jumps of hundreds between neighbouring values that the indices turn
into jumps of one. The table (a bitmap of the values present between the
smallest and the largest) is stored in the frame's coarsest chunk.
"""

from __future__ import annotations

import math
import struct

import numba as nb
import numpy as np

from ._errors import CorruptError

TABLE_COST = 1.0  # a table is used when the estimated saving exceeds this times its bitmap size
MAX_DENSITY = 0.95  # planes using more of their span are not worth estimating
_HEAD = struct.Struct("<iI")  # first value, span (bitmap bits; 0: no table)


class ValueTable:
    """The distinct values of a plane: ``first`` and the bitmap
    ``present[b]`` = value ``first + b`` occurs."""

    def __init__(self, first: int, present: np.ndarray):
        self.first = first
        self.present = present
        self.values = (first + np.flatnonzero(present)).astype(np.int32)

    def indices(self, plane: np.ndarray) -> np.ndarray:
        lut = (np.cumsum(self.present, dtype=np.int32) - 1).astype(np.int32)
        return lut[plane - self.first]

    def lookup(self, idx: np.ndarray, exact: bool) -> np.ndarray:
        """Values of an index plane; ``exact`` (full resolution) demands
        indices inside the table, a coarser level is clipped to it."""
        n = len(self.values)
        if exact:
            if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= n):
                raise CorruptError("decoded indices outside the value table")
        else:
            idx = np.clip(idx, 0, n - 1)
        return self.values[idx]


OUT_OK, OUT_BAD_INDEX, OUT_BAD_VALUE = 0, 1, 2


def to_output(plane: np.ndarray, table: ValueTable | None, exact: bool, lo: int, hi: int, out: np.ndarray) -> int:
    """Write the int32 ``plane`` (indices when ``table`` is given) to
    ``out`` (its dtype, same shape) in one pass: through the table, with
    indices outside it an error when ``exact`` (full resolution), clipped
    otherwise; then values outside ``lo..hi`` an error when ``exact``,
    clipped otherwise. Return ``OUT_OK``, ``OUT_BAD_INDEX`` or
    ``OUT_BAD_VALUE`` (``out`` is then incomplete)."""
    values = _NO_VALUES if table is None else table.values
    return _to_output(plane, values, table is not None, exact, lo, hi, out)


_NO_VALUES = np.zeros(1, np.int32)


@nb.njit(cache=True, nogil=True, boundscheck=False)
def _to_output(plane, values, lookup, exact, lo, hi, out):
    rows, cols = plane.shape
    n = values.shape[0]
    for i in range(rows):
        for j in range(cols):
            v = plane[i, j]
            if lookup:
                if v < 0 or v >= n:
                    if exact:
                        return OUT_BAD_INDEX
                    v = min(max(v, 0), n - 1)
                v = values[v]
            if v < lo or v > hi:
                if exact:
                    return OUT_BAD_VALUE
                v = min(max(v, lo), hi)
            out[i, j] = v
    return OUT_OK


def choose(plane: np.ndarray) -> ValueTable | None:
    """The plane's value table if coding indices is expected to save more
    than ``TABLE_COST`` times the table's size, else None.

    The estimate is the drop of log2(1 + |difference|) between horizontal
    and vertical neighbours (every fourth row) when values become indices:
    a lower bound of what the wavelet details lose (jumps spread over
    several coefficients and levels)."""
    first, last = _extent(plane)
    span = last - first + 1
    if span < 3:
        return None
    present = np.zeros(span, np.bool_)
    n = _presence(plane, first, present)
    if n > MAX_DENSITY * span:
        return None
    table = ValueTable(first, present)
    lut = (np.cumsum(present, dtype=np.int32) - 1).astype(np.int32)
    saved = 4 * _saving(plane, first, lut)  # every fourth row
    return table if saved / 8 > TABLE_COST * _bitmap_bytes(span) else None


@nb.njit(cache=True, nogil=True)
def _extent(plane):
    lo = hi = plane[0, 0]
    for i in range(plane.shape[0]):
        for j in range(plane.shape[1]):
            v = plane[i, j]
            lo = min(lo, v)
            hi = max(hi, v)
    return int(lo), int(hi)


@nb.njit(cache=True, nogil=True)
def _presence(plane, first, present):
    n = 0
    for i in range(plane.shape[0]):
        for j in range(plane.shape[1]):
            b = plane[i, j] - first
            if not present[b]:
                present[b] = True
                n += 1
    return n


@nb.njit(cache=True, nogil=True)
def _saving(plane, first, lut):
    """Bits saved on the differences to the east and south neighbours of
    every fourth row."""
    rows, cols = plane.shape
    saved = 0.0
    for i in range(0, rows, 4):
        for j in range(cols):
            v = plane[i, j]
            x = lut[v - first]
            if j + 1 < cols:
                w = plane[i, j + 1]
                saved += math.log2(1.0 + abs(w - v)) - math.log2(1.0 + abs(lut[w - first] - x))
            if i + 1 < rows:
                w = plane[i + 1, j]
                saved += math.log2(1.0 + abs(w - v)) - math.log2(1.0 + abs(lut[w - first] - x))
    return saved


def _bitmap_bytes(span: int) -> int:
    return (span + 7) // 8


def pack(tables: list[ValueTable | None]) -> bytes:
    """The tables of a frame's samples as stored in its coarsest chunk."""
    out = []
    for t in tables:
        if t is None:
            out.append(_HEAD.pack(0, 0))
        else:
            out.append(_HEAD.pack(t.first, len(t.present)))
            out.append(np.packbits(t.present, bitorder="little").tobytes())
    return b"".join(out)


def unpack(blob: memoryview, pos: int, samples: int, lo: int, hi: int, where: str):
    """Read ``samples`` tables from ``blob[pos:]``; return (tables, new pos).
    Tables must lie inside ``lo..hi`` and start and end with a present value."""
    tables = []
    for s in range(samples):
        if pos + _HEAD.size > len(blob):
            raise CorruptError(f"{where}: value table runs past the chunk")
        first, span = _HEAD.unpack_from(blob, pos)
        pos += _HEAD.size
        if span == 0:
            tables.append(None)
            continue
        nb = _bitmap_bytes(span)
        if first < lo or first + span - 1 > hi or pos + nb > len(blob):
            raise CorruptError(f"{where}: value table of sample {s} is inconsistent")
        bits = np.unpackbits(np.frombuffer(blob[pos : pos + nb], np.uint8), bitorder="little")
        present = bits[:span].astype(bool)
        if not (present[0] and present[-1]) or bits[span:].any():
            raise CorruptError(f"{where}: value table of sample {s} is inconsistent")
        pos += nb
        tables.append(ValueTable(first, present))
    return tables, pos
