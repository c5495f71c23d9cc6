"""Lossy mode: CDF 9/7 (PyWavelets ``bior4.4``, periodization) with one
dead-zone scalar quantiser for every band, its step found by bisection so
that the decoded image meets a target PSNR."""

from __future__ import annotations

import numpy as np
import pywt

from . import _lifting as lift

WAVELET = "bior4.4"
MODE = "periodization"
_SEARCH_STEPS = 14
_MAX_INDEX = (1 << 23) - 1


def _analyse(plane: np.ndarray, levels: int):
    """(LL, details) with details[k] = (HL, LH, HH) of level k+1, every band
    ceil-sized like the lossless layout (periodization)."""
    ll = plane.astype(np.float64)
    details = []
    for _ in range(levels):
        ll, (ch, cv, cd) = pywt.dwt2(ll, WAVELET, mode=MODE)
        details.append((cv, ch, cd))  # vertical detail = high-pass horizontally = HL
    return ll, details


def _synthesise(ll: np.ndarray, details, stop: int, shapes) -> np.ndarray:
    for k in range(len(details) - 1, stop - 1, -1):
        cv, ch, cd = details[k]
        ll = pywt.idwt2((ll, (ch, cv, cd)), WAVELET, mode=MODE)[: shapes[k][0], : shapes[k][1]]
    return ll


def _quant(x: np.ndarray, step: float) -> np.ndarray:
    q = np.floor(np.abs(x) / step)
    np.minimum(q, _MAX_INDEX, out=q)
    return (np.sign(x) * q).astype(np.int32)


def _dequant(q: np.ndarray, step: float, delta: float) -> np.ndarray:
    return np.where(q == 0, 0.0, np.sign(q) * (np.abs(q) + delta) * step)


def _to_pixels(planes: np.ndarray, rct: bool, lo: int, hi: int) -> np.ndarray:
    out = np.rint(planes).astype(np.int32)
    if rct:
        out = lift.rct_inverse(out)
    return np.clip(out, lo, hi, out=out)


def _psnr(a: np.ndarray, b: np.ndarray, peak: float) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak * peak / mse)


def quantise(planes, levels, rct, bits, signed, target, delta):
    """Return (coefs[f][s] = (LL, details) of int32 indices, step)."""
    from ._codec import _range

    lo, hi = _range(bits, signed)
    original = lift.rct_inverse(planes) if rct else planes
    nf, rows, cols, ns = planes.shape
    shapes = lift.band_shapes(rows, cols, levels)
    analysed = [[_analyse(planes[f, :, :, s], levels) for s in range(ns)] for f in range(nf)]

    def trial(step):
        coefs, recon = [], np.empty(planes.shape, np.float64)
        for f in range(nf):
            row = []
            for s in range(ns):
                ll, details = analysed[f][s]
                qll = _quant(ll, step)
                qd = [tuple(_quant(b, step) for b in d) for d in details]
                row.append((qll, qd))
                rl = _dequant(qll, step, delta)
                rd = [tuple(_dequant(b, step, delta) for b in d) for d in qd]
                recon[f, :, :, s] = _synthesise(rl, rd, 0, shapes)
            coefs.append(row)
        return coefs, _psnr(original, _to_pixels(recon, rct, lo, hi), hi - lo)

    # bisection on log2(step): a coarser step never raises the PSNR much
    lo_e, hi_e = -6.0, float(bits + 4)
    best = None
    for _ in range(_SEARCH_STEPS):
        mid = (lo_e + hi_e) / 2
        coefs, p = trial(2.0**mid)
        if p >= target:
            best = (coefs, 2.0**mid)
            lo_e = mid
        else:
            hi_e = mid
    if best is None:
        best = trial(2.0**lo_e)[0], 2.0**lo_e
    return best


def reconstruct(coefs, hdr, level: int) -> np.ndarray:
    """Float planes of the decoded quantiser indices at ``level`` (the LL
    band's gain of 2 per level removed), inverse RCT applied, rounded."""
    shapes = lift.band_shapes(hdr.rows, hdr.cols, hdr.levels)
    r, c = shapes[level]
    out = np.empty((hdr.frames, r, c, hdr.samples), np.float64)
    step, delta = hdr.quant_step, hdr.recon_offset
    for f in range(hdr.frames):
        for s in range(hdr.samples):
            qll, qd = coefs[f][s]
            rl = _dequant(qll, step, delta)
            rd = [None if d is None else tuple(_dequant(b, step, delta) for b in d) for d in qd]
            out[f, :, :, s] = _synthesise(rl, rd, level, shapes) / (2.0**level)
    planes = np.rint(out).astype(np.int32)
    return lift.rct_inverse(planes) if hdr.rct else planes
