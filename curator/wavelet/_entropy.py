"""Context-modelled entropy coding of wavelet subbands (numba).

Every coefficient ``v`` is coded as one symbol of an adaptive 16-symbol
range coder plus raw bits. The local activity of a context (already coded
magnitudes: west, north, north-west, north-east, west-west, north-north in
the same band) picks a shift ``k``; the symbol is the half-octave class of
``|v| >> k`` (0, 1, then two classes per octave: the leading one and the
bit below it; with ``k > 0`` class 0 is the zero alone), 15 escaping to a
raw unary extension; the bits of ``|v|`` below what the class says go to a
separate raw bit stream. The sign of a detail coefficient is a binary
decision of the range coder in the context of the signs of its west,
north and north-west neighbours (edges give runs of equal and alternating signs); in the
LL band it is a raw bit. The frequency table is chosen by the
local activity, the parent in the coarser level and the co-located
coefficients of the bands of the same level coded before.

Where that context is all zero, a run symbol instead says how many of the
next "quiet" positions (up to 15: those whose context would be zero too)
are zero; a run stopped early is followed by its nonzero value, coded
with a table of its own. Flat areas then cost one symbol per 15
coefficients.

A chunk may be in mantissa mode (synthetic images, chosen by the encoder
from a histogram): then the top four bits below the class are coded through
tables of their own, and every table codes with the mean of its slow
estimate and a fast one.

The coder is the LZMA carry-less range coder (32-bit range, byte-wise
renormalisation) with 15-bit cumulative frequency tables updated after
every symbol by an exponential step towards the coded symbol (as in AV1),
so neither side divides; the decoder finds a symbol by counting the bounds
below its code value. docs/wavelet-format.md specifies all of it bit for bit.

The coder state of one chunk lives in an int64 array ``st`` (see ``_ST_*``)
so that a chunk can be coded band after band from Python.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numba.cpython.unsafe.numbers import leading_zeros

NSYM = 16  # symbols of a frequency table
D = NSYM + 1  # offset of the slow estimate in a table row
ESC = NSYM - 1  # the escape symbol: class ESC or more
CDF_BITS = 15
CDF_MAX = (1 << CDF_BITS) - NSYM  # stored cumulative values run 0..CDF_MAX
NQL = 30  # quantised local activity
NQP = 10  # quantised parent/cross activity
NGROUPS = 7  # HL, LH, HH without parent; HL, LH, HH with parent; LL
NCTX = NGROUPS * NQL * NQP  # class tables
RUN_MAX = 15  # run mode: a run symbol covers at most this many quiet positions
RUN_BASE = NCTX  # run tables: (group, quiet positions ahead - 1)
RUNI_BASE = RUN_BASE + NGROUPS * RUN_MAX  # the class of the nonzero that ends a run, per group
NTABLES = RUNI_BASE + NGROUPS
NSIGN = 6 * 27  # sign tables of the detail bands: (group, signs of west, north, north-west)
BIT_MIN = 32  # a sign table holds p (0..BIT_MAX) and a count: P(positive) = (p + BIT_MIN) / 2**15
BIT_MAX = (1 << CDF_BITS) - 2 * BIT_MIN
GROUP_LL = 6
SHIFT_BASE = 13  # k = max(0, (ql - SHIFT_BASE) >> 1)
MAX_MAG = (1 << 26) - 1  # decoded magnitudes beyond this are corrupt
C1, C2, C3, C4 = 16, 48, 128, 384  # a table's adaptation shift: 4 + number of these it has been used
FAST_RATE = 3  # mantissa mode: shift of the fast estimate
MANT_BITS = 4  # mantissa bits per table symbol in mantissa mode
MAX_CLASS = 47  # the largest class of a valid file (magnitudes of 16-bit images stay far below 2**24)
MANT_Q = 48  # classes and shifts that select a mantissa table
MANT_K = 10
NMCTX = NGROUPS * MANT_Q * MANT_K

# coder state slots
_LOW, _RNG, _CACHE, _CSIZE, _APOS, _RACC, _RBITS, _RPOS, _CODE = range(9)
STATE_SIZE = 9


_CDF_INIT = np.tile(np.arange(NSYM + 1) * (CDF_MAX // NSYM), 2).astype(np.int32)


def new_tables(mant: bool, packed: bool = False) -> tuple[np.ndarray, ...]:
    """Fresh model: (class tables, their counts, mantissa tables, their
    counts, sign tables). Without mantissa mode the coders read neither
    the fast estimates nor the mantissa tables: they are not allocated.
    With ``packed`` (the decoder) the class and mantissa tables are packed
    (see :func:`new_packed_tables`)."""
    if packed:
        cdf = new_packed_tables(NTABLES, mant)
        mcdf = new_packed_tables(NMCTX if mant else 1, mant)
    else:
        width = 2 * D if mant else D
        cdf = np.empty((NTABLES, width), np.int32)
        cdf[:] = _CDF_INIT[:width]
        mcdf = np.empty((NMCTX if mant else 1, width), np.int32)
        mcdf[:] = _CDF_INIT[:width]
    sgn = np.zeros((NSIGN, 2), np.int32)
    sgn[:, 0] = BIT_MAX // 2
    return cdf, np.zeros(NTABLES, np.int32), mcdf, np.zeros(NMCTX, np.int32), sgn


# --- packed tables of the decoder -------------------------------------------
# The decoder keeps each table as 16 lanes of 16 bits in four uint64 words
# (lane t of word t >> 2 at bit 16 * (t & 3)). In a plain chunk the lanes
# hold b[t] = cdf[t] + t, the bound the search compares with (cdf[16] is
# CDF_MAX, a constant, and is not stored); in mantissa mode four words of
# the slow estimate c[t] are followed by four of the fast one f[t], and the
# bound b[t] = floor((c[t] + f[t]) / 2) + t is formed lane-wise (c + f is at
# most 2 * CDF_MAX < 2**16). Every b[t] is at most 0x7FFF, so a lane never
# carries into the next one and the search and the adaptation work on four
# lanes per operation (SWAR), giving the same values as the per-entry
# arithmetic of the encoder.
_ONES = np.uint64(0x0001000100010001)
_HIGH = np.uint64(0x8000800080008000)
_T = np.array([sum(t << (16 * i) for i, t in enumerate(range(4 * k, 4 * k + 4))) for k in range(4)], np.uint64)
_UP = np.array([[sum(0xFFFF << (16 * i) for i in range(4) if 4 * k + i > s) for k in range(4)]
                for s in range(NSYM)], np.uint64)  # lanes t > s: their target is CDF_MAX
_LANE = np.array([(0xFFFF >> r) * 0x0001000100010001 for r in range(16)], np.uint64)  # lane-wise >> r mask
_ROUND = np.array([((1 << r) - 1) * 0x0001000100010001 for r in range(16)], np.uint64)  # 2**r - 1 per lane
_MAXW = np.uint64(CDF_MAX * 0x0001000100010001)
_FAST_LANE = _LANE[FAST_RATE]
_FAST_ROUND = _ROUND[FAST_RATE]


def _pack_lanes(values) -> np.ndarray:
    return np.array([sum(int(values[4 * k + i]) << (16 * i) for i in range(4)) for k in range(4)], np.uint64)


_PACKED_INIT = _pack_lanes(_CDF_INIT[:NSYM] + np.arange(NSYM))  # b[t] = cdf[t] + t
_PACKED_MANT_INIT = np.concatenate([_pack_lanes(_CDF_INIT[:NSYM])] * 2)  # c[t], f[t]


def new_packed_tables(n: int = NTABLES, mant: bool = False) -> np.ndarray:
    """``n`` fresh packed tables of the decoder (see above)."""
    tables = np.empty((n, 8 if mant else 4), np.uint64)
    tables[:] = _PACKED_MANT_INIT if mant else _PACKED_INIT
    return tables


def new_encoder() -> np.ndarray:
    st = np.zeros(STATE_SIZE, np.int64)
    st[_RNG] = 0xFFFFFFFF
    st[_CSIZE] = 1
    return st


def new_decoder(ac: np.ndarray) -> np.ndarray:
    st = np.zeros(STATE_SIZE, np.int64)
    st[_RNG] = 0xFFFFFFFF
    code = 0
    for i in range(4):
        code = (code << 8) | (int(ac[i]) if i < len(ac) else 0)
    st[_CODE] = code
    st[_APOS] = 4
    return st


@nb.njit(inline="always")
def _u(x):
    """An array index as an unsigned integer: numba then emits no
    negative-index wrap-around for it (every index here is >= 0)."""
    return np.uint64(x)


@nb.njit(inline="always")
def _bitlen(x):
    return 64 - leading_zeros(np.uint64(x))


@nb.njit(inline="always")
def _qlog(x):
    """Half-octave class: 0, 1, then 2 classes per octave."""
    if x < 2:
        return x
    b = _bitlen(x)
    return 2 * b - 2 + ((x >> (b - 2)) & 1)


@nb.njit(inline="always")
def _med(band, i, j):
    if i == 0:
        return np.int64(band[i, j - 1]) if j > 0 else np.int64(0)
    if j == 0:
        return np.int64(band[i - 1, j])
    wa = np.int64(band[i, j - 1])
    na = np.int64(band[i - 1, j])
    nw = np.int64(band[i - 1, j - 1])
    if nw >= max(wa, na):
        return min(wa, na)
    if nw <= min(wa, na):
        return max(wa, na)
    return wa + na - nw


@nb.njit(inline="always")
def _enc_sym(cdf, cnt, ctx, s, fs, mant, ac, low, rng, cache, csize, apos):
    """Code symbol ``s`` with table ``ctx``, update the table; return the
    new coder state."""
    rr = rng >> CDF_BITS
    lo = rr * (((np.int64(cdf[_u(ctx), _u(s)]) + cdf[_u(ctx), _u(s + fs)]) >> 1) + s)
    rng = rr * (((np.int64(cdf[_u(ctx), _u(s + 1)]) + cdf[_u(ctx), _u(s + 1 + fs)]) >> 1) + s + 1) - lo
    low += lo
    _adapt(cdf, cnt, ctx, s, mant)
    while rng < 16777216:
        rng <<= 8
        if low < 0xFF000000 or low > 0xFFFFFFFF:
            carry = low >> 32
            temp = cache
            while True:
                ac[_u(apos)] = (temp + carry) & 0xFF
                apos += 1
                temp = 0xFF
                csize -= 1
                if csize == 0:
                    break
            cache = (low >> 24) & 0xFF
        csize += 1
        low = (low & 0x00FFFFFF) << 8
    return low, rng, cache, csize, apos


@nb.njit(inline="always")
def _rate(n):
    """A table's adaptation shift after ``n`` uses."""
    return 4 + (n >= C1) + (n >= C2) + (n >= C3) + (n >= C4)


@nb.njit(inline="always")
def _lane(pk, ctx, t):
    """Lane ``t`` of packed table ``ctx`` (of its slow estimate in mantissa mode)."""
    return np.int64((pk[_u(ctx), _u(t >> 2)] >> np.uint64(16 * (t & 3))) & np.uint64(0xFFFF))


@nb.njit(inline="always")
def _bound(pk, ctx, t, mant):
    """The bound b[t] of packed table ``ctx``."""
    if mant:
        return ((_lane(pk, ctx, t) + _lane(pk, ctx, t + NSYM)) >> 1) + t
    return _lane(pk, ctx, t)


@nb.njit(inline="always")
def _dec_renorm(ac, nac, rng, code, apos):
    """Bring the range back above 2**24, a byte of ``ac`` at a time (zeros
    past its end: the caller checks ``apos`` against ``nac`` at the end)."""
    while rng < 16777216:
        rng <<= 8
        b = 0
        if apos < nac:
            b = ac[_u(apos)]
        apos += 1
        code = ((code << 8) | b) & 0xFFFFFFFF
    return rng, code, apos


@nb.njit(inline="always")
def _raw_fill(raw, nraw, racc, rbits, rpos):
    """Top the raw-bit buffer ``racc`` (``rbits`` bits, most significant
    first) up to 49..56 bits, zeros past the end of ``raw``; the bits read
    are ``8 * rpos - rbits``."""
    while rbits <= 48:
        b = 0
        if rpos < nraw:
            b = raw[_u(rpos)]
        rpos += 1
        racc = (racc << 8) | b
        rbits += 8
    return racc, rbits, rpos


@nb.njit(inline="always")
def _adapt_lanes(c, m, r, lane, rnd):
    """Four lanes of an estimate after a symbol: lanes in ``m`` move up by
    (CDF_MAX - c) >> r, the others down by ceil(c / 2**r), as :func:`_adapt`."""
    up = c + (((_MAXW - c) >> r) & lane)
    down = c - (((c + rnd) >> r) & lane)
    return (up & m) | (down & ~m)


@nb.njit(inline="always")
def _dec_sym_packed(pk, cnt, ctx, mant, ac, nac, rng, code, apos):
    """Decode a symbol with packed table ``ctx`` (see above), update the
    table as :func:`_adapt` does; return (symbol, range, code, pos)."""
    rr = rng >> CDF_BITS
    # code >= rr * b  <=>  q >= b; a 32-bit division, and the min in integers
    # (numba would take the min of a uint32 and an int in floating point)
    q = np.uint64(min(np.int64(np.uint32(code) // np.uint32(rr)), 0x7FFF))
    qw = (q * _ONES) | _HIGH
    passed = np.uint64(0)
    for k in range(4):  # lanes whose bound q reaches: bit 15 of (q | 0x8000) - b
        b = pk[_u(ctx), _u(k)]
        if mant:  # b = floor((c + f) / 2) + t, lane-wise
            b = (((b + pk[_u(ctx), _u(k + 4)]) >> np.uint64(1)) & _LANE[_u(1)]) + _T[_u(k)]
        passed += ((qw - b) & _HIGH) >> np.uint64(15)
    s = np.int64((passed * _ONES) >> np.uint64(48)) - 1  # lane 0 (bound 0) always passes
    lo = rr * _bound(pk, ctx, s, mant)
    hi = rr * (CDF_MAX + NSYM if s == NSYM - 1 else _bound(pk, ctx, s + 1, mant))
    code -= lo
    rng = hi - lo
    n = cnt[_u(ctx)]
    rate = _rate(n)
    cnt[_u(ctx)] = n + (1 if n < C4 else 0)
    r = np.uint64(rate)
    lane = _LANE[_u(rate)]
    rnd = _ROUND[_u(rate)]
    if mant:
        for k in range(4):
            m = _UP[_u(s), _u(k)]
            pk[_u(ctx), _u(k)] = _adapt_lanes(pk[_u(ctx), _u(k)], m, r, lane, rnd)
            pk[_u(ctx), _u(k + 4)] = _adapt_lanes(pk[_u(ctx), _u(k + 4)], m, np.uint64(FAST_RATE), _FAST_LANE, _FAST_ROUND)
    else:
        for k in range(4):
            pk[_u(ctx), _u(k)] = _adapt_lanes(pk[_u(ctx), _u(k)] - _T[_u(k)], _UP[_u(s), _u(k)], r, lane, rnd) + _T[_u(k)]
    rng, code, apos = _dec_renorm(ac, nac, rng, code, apos)
    return s, rng, code, apos


@nb.njit(inline="always")
def _enc_bit(sgn, ctx, bit, ac, low, rng, cache, csize, apos):
    """Code a binary decision with sign table ``ctx`` (branch-free: signs
    are close to random, a mispredicted branch costs more than the
    arithmetic)."""
    bound = (rng >> CDF_BITS) * (np.int64(sgn[_u(ctx), _u(0)]) + BIT_MIN)
    m = -np.int64(bit)
    low += bound & m
    rng = bound + ((rng - 2 * bound) & m)
    _adapt_bit(sgn, ctx, m)
    while rng < 16777216:
        rng <<= 8
        if low < 0xFF000000 or low > 0xFFFFFFFF:
            carry = low >> 32
            temp = cache
            while True:
                ac[_u(apos)] = (temp + carry) & 0xFF
                apos += 1
                temp = 0xFF
                csize -= 1
                if csize == 0:
                    break
            cache = (low >> 24) & 0xFF
        csize += 1
        low = (low & 0x00FFFFFF) << 8
    return low, rng, cache, csize, apos


@nb.njit(inline="always")
def _dec_bit(sgn, ctx, ac, nac, rng, code, apos):
    bound = (rng >> CDF_BITS) * (np.int64(sgn[_u(ctx), _u(0)]) + BIT_MIN)
    bit = np.int64(code >= bound)
    m = -bit
    code -= bound & m
    rng = bound + ((rng - 2 * bound) & m)
    _adapt_bit(sgn, ctx, m)
    rng, code, apos = _dec_renorm(ac, nac, rng, code, apos)
    return bit, rng, code, apos


@nb.njit(inline="always")
def _adapt_bit(sgn, ctx, m):
    """``m``: 0 after a 0, -1 after a 1."""
    n = sgn[_u(ctx), _u(1)]
    rate = _rate(n)
    sgn[_u(ctx), _u(1)] = n + (1 if n < C4 else 0)
    tgt = BIT_MAX & ~m
    sgn[_u(ctx), _u(0)] += (tgt - sgn[_u(ctx), _u(0)]) >> rate


@nb.njit(inline="always")
def _sgn(x):
    x = np.int64(x)
    return (x >> 63) | (((-x) >> 63) & 1)


@nb.njit(inline="always")
def _sign_ctx(band, i, j, group):
    """Sign table of a detail coefficient: its group and the signs of its
    west, north and north-west neighbours (decoded values), without branches."""
    w = _sgn(band[_u(i), _u(j - 1)]) if j > 0 else 0
    n = _sgn(band[_u(i - 1), _u(j)]) if i > 0 else 0
    d = _sgn(band[_u(i - 1), _u(j - 1)]) if i > 0 and j > 0 else 0
    return ((group * 3 + w + 1) * 3 + n + 1) * 3 + d + 1


@nb.njit(inline="always")
def _adapt(cdf, cnt, ctx, s, mant):
    n = cnt[_u(ctx)]
    rate = _rate(n)
    cnt[_u(ctx)] = n + (1 if n < C4 else 0)
    for t in range(1, NSYM):
        tgt = CDF_MAX if t > s else 0
        cdf[_u(ctx), _u(t)] += (tgt - cdf[_u(ctx), _u(t)]) >> rate
    if mant:
        for t in range(D + 1, D + NSYM):
            tgt = CDF_MAX if t > s + D else 0
            cdf[_u(ctx), _u(t)] += (tgt - cdf[_u(ctx), _u(t)]) >> FAST_RATE


# --- the context of a coefficient --------------------------------------------
# Encoder and decoder must agree on every context: both take them from these.


@nb.njit(inline="always")
def _context(mp, oth, i, j, cols, gbase):
    """The context of position (i, j) of a band from the magnitudes coded
    before it (``mp``, offset by 2 rows and 2 columns) and the parent/cross
    activity ``oth``: (n, ctx, k). Where the context is all zero, run mode:
    ``n`` (1..RUN_MAX) quiet positions from j on (ctx, k unused); else
    ``n`` is 0, ``ctx`` the class table and ``k`` the shift."""
    r = i + 2
    k2 = j + 2
    local = (
        2 * (np.int64(mp[_u(r), _u(k2 - 1)]) + mp[_u(r - 1), _u(k2)])
        + mp[_u(r - 1), _u(k2 - 1)]
        + mp[_u(r - 1), _u(k2 + 1)]
        + ((np.int64(mp[_u(r), _u(k2 - 2)]) + mp[_u(r - 2), _u(k2)]) >> 1)
    )
    qo = _qlog(np.int64(oth[_u(i), _u(j)])) >> 1
    ql = min(_qlog(local), NQL - 1)
    qp = min(qo, NQP - 1)
    n = 0
    ctx = gbase + ql * NQP + qp
    k = max(0, (ql - SHIFT_BASE) >> 1)
    if ql == 0 and qp == 0:
        n = 1
        lim = min(RUN_MAX, cols - j)
        # quiet: the position would have the zero context if its west
        # neighbours were 0. The loop has a single exit (no break): with a
        # second one numba keeps a reference count update of mp and oth
        # per coefficient, which costs about a quarter of the coding speed.
        while n < lim:
            p = j + n + 2
            if (mp[_u(r - 1), _u(p - 1)] | mp[_u(r - 1), _u(p)] | mp[_u(r - 1), _u(p + 1)]) != 0 or mp[_u(r - 2), _u(p)] > 1 or oth[_u(i), _u(p - 2)] > 1:
                lim = n  # not quiet: the run ends before p
            else:
                n += 1
    return n, ctx, k


@nb.njit(inline="always")
def _class_bits(q, k):
    """From the coded class ``q`` (escape extension included; with k > 0
    class 0 is the zero alone) and the shift ``k``: (the class of |v| >> k,
    nm, nr): nm bits of |v| >> k below its class, nr = k + nm bits of |v|
    below what the class says (none for a zero)."""
    zero = q == 0
    if k > 0 and q > 0:
        q -= 1  # class of |v| >> k (0: 0 < |v| < 2**k)
    nm = ((q >> 1) - 1) if q >= 2 else 0
    nr = 0 if zero else k + nm
    return q, nm, nr


@nb.njit(inline="always")
def _mant_ctx(group, q, k, nr):
    """Mantissa mode, ``nr`` > 0 bits below class ``q`` (shift ``k``): the
    table of the top ``w`` of them (group, class, shift); return (table,
    w, the bits left for the raw stream)."""
    w = min(nr, MANT_BITS)
    ctx = (group * MANT_Q + min(q, MANT_Q - 1)) * MANT_K + min(k, MANT_K - 1)
    return ctx, w, nr - w


@nb.njit(inline="always")
def _encode_core(st, ac, raw, cdf, cnt, mcdf, mcnt, sgn, band, mp, oth, group, predict, mant):
    """Code one band; return True if ``ac`` is too small (nothing usable
    was written then). ``mp`` (rows+2, cols+3, zero) receives the coded
    magnitudes; ``oth`` is the parent/cross activity (band shape);
    ``predict`` codes the MED prediction residual (LL band)."""
    low = st[_LOW]
    rng = st[_RNG]
    cache = st[_CACHE]
    csize = st[_CSIZE]
    apos = st[_APOS]
    racc = st[_RACC]
    rbits = st[_RBITS]
    rpos = st[_RPOS]
    rows, cols = band.shape
    gbase = group * NQL * NQP
    rbase = RUN_BASE + group * RUN_MAX
    fs = D if mant else 0  # mantissa (synthetic) mode: mean of a fast and the slow estimate
    limit = ac.shape[0] - 64
    for i in range(rows):
        if apos + csize + 32 * cols > limit:
            return True
        r = i + 2
        j = 0
        while j < cols:
            k2 = j + 2
            n, ctx, k = _context(mp, oth, i, j, cols, gbase)
            if n > 0:
                # run mode: the zeros among the next n quiet positions, then
                # (if the run stops at a quiet position) a known nonzero
                run = 0
                while run < n:
                    v = np.int64(band[_u(i), _u(j + run)])
                    if predict:
                        v -= _med(band, i, j + run)
                    if v != 0:
                        break
                    run += 1
                low, rng, cache, csize, apos = _enc_sym(
                    cdf, cnt, rbase + n - 1, run, fs, mant, ac, low, rng, cache, csize, apos
                )
                j += run
                if run == n:
                    continue
                k2 = j + 2
                ctx = RUNI_BASE + group
                k = 0
            v = np.int64(band[_u(i), _u(j)])
            if predict:
                v -= _med(band, i, j)
            mag = -v if v < 0 else v
            mp[_u(r), _u(k2)] = mag
            q = _qlog(mag >> k)
            if k > 0 and mag != 0:
                q += 1  # class 0 is the zero alone, class 1 is 0 < |v| < 2**k
            s = min(q, ESC)
            low, rng, cache, csize, apos = _enc_sym(cdf, cnt, ctx, s, fs, mant, ac, low, rng, cache, csize, apos)
            # raw bits: escape extension (unary), bits below the class, sign
            if s == ESC:
                e = q - ESC  # e ones, then a zero
                racc = (racc << (e + 1)) | (((np.int64(1) << e) - 1) << 1)
                rbits += e + 1
                while rbits >= 8:
                    rbits -= 8
                    raw[_u(rpos)] = (racc >> rbits) & 0xFF
                    rpos += 1
                racc &= (np.int64(1) << rbits) - 1
            q, _, nr = _class_bits(q, k)
            if mant and nr > 0:
                # the top bits below the class through a table of (group, class, shift)
                ctx, w, nr = _mant_ctx(group, q, k, nr)
                s = (mag >> nr) & ((1 << w) - 1)
                low, rng, cache, csize, apos = _enc_sym(
                    mcdf, mcnt, ctx, s, fs, mant, ac, low, rng, cache, csize, apos
                )
            val = mag & ((np.int64(1) << nr) - 1)
            if mag != 0:
                if predict:
                    val = (val << 1) | (1 if v < 0 else 0)
                    nr += 1
                else:
                    low, rng, cache, csize, apos = _enc_bit(
                        sgn, _sign_ctx(band, i, j, group), v < 0, ac, low, rng, cache, csize, apos
                    )
            racc = (racc << nr) | val
            rbits += nr
            while rbits >= 8:
                rbits -= 8
                raw[_u(rpos)] = (racc >> rbits) & 0xFF
                rpos += 1
            racc &= (np.int64(1) << rbits) - 1
            j += 1
    st[_LOW] = low
    st[_RNG] = rng
    st[_CACHE] = cache
    st[_CSIZE] = csize
    st[_APOS] = apos
    st[_RACC] = racc
    st[_RBITS] = rbits
    st[_RPOS] = rpos
    return False


@nb.njit(cache=True, nogil=True)
def finish(st, ac, raw):
    """Flush both streams; return (ac_length, raw_length). The first range
    coder byte is always 0 and is dropped by the caller (ac[1:])."""
    low = st[_LOW]
    cache = st[_CACHE]
    csize = st[_CSIZE]
    apos = st[_APOS]
    for _ in range(5):
        if low < 0xFF000000 or low > 0xFFFFFFFF:
            carry = low >> 32
            temp = cache
            while True:
                ac[apos] = (temp + carry) & 0xFF
                apos += 1
                temp = 0xFF
                csize -= 1
                if csize == 0:
                    break
            cache = (low >> 24) & 0xFF
        csize += 1
        low = (low & 0x00FFFFFF) << 8
    rpos = st[_RPOS]
    rbits = st[_RBITS]
    if rbits > 0:
        raw[rpos] = (st[_RACC] << (8 - rbits)) & 0xFF
        rpos += 1
    return apos, rpos


@nb.njit(inline="always")
def _decode_core(st, ac, raw, cdf, cnt, mcdf, mcnt, sgn, band, mp, oth, group, predict, mant):
    """Inverse of :func:`encode_band`: fill ``band`` and ``mp``. Return
    True if a stream was read past its end or a value is out of range
    (corrupt or truncated data)."""
    rng = st[_RNG]
    code = st[_CODE]
    apos = st[_APOS]
    racc = st[_RACC]
    rbits = st[_RBITS]
    rpos = st[_RPOS]
    nraw = raw.shape[0]
    nac = ac.shape[0]
    rows, cols = band.shape
    gbase = group * NQL * NQP
    rbase = RUN_BASE + group * RUN_MAX
    bad = False
    for i in range(rows):
        r = i + 2
        j = 0
        while j < cols:
            k2 = j + 2
            n, ctx, k = _context(mp, oth, i, j, cols, gbase)
            if n > 0:
                run, rng, code, apos = _dec_sym_packed(cdf, cnt, rbase + n - 1, mant, ac, nac, rng, code, apos)
                if run > n:
                    bad = True
                    break
                for t in range(j, j + run):
                    band[_u(i), _u(t)] = _med(band, i, t) if predict else 0
                j += run
                if run == n:
                    continue
                k2 = j + 2
                ctx = RUNI_BASE + group
                k = 0
                ends_run = True
            else:
                ends_run = False
            s, rng, code, apos = _dec_sym_packed(cdf, cnt, ctx, mant, ac, nac, rng, code, apos)
            q = s
            if ends_run and s == 0:  # the value that ends a run is nonzero
                bad = True
                break
            if s == ESC:
                # unary extension: ones until a zero
                while True:
                    if rbits == 0:
                        racc, rbits, rpos = _raw_fill(raw, nraw, racc, rbits, rpos)
                    rbits -= 1
                    bit = (racc >> rbits) & 1
                    racc &= (np.int64(1) << rbits) - 1
                    if bit == 0:
                        break
                    q += 1
                    if q > MAX_CLASS:
                        bad = True
                        break
                if bad:
                    break
            q, nm, nr = _class_bits(q, k)
            top = np.int64(q) if q < 2 else np.int64(2 | (q & 1)) << nm
            mag = top << k
            if mant and nr > 0:
                ctx, w, nr = _mant_ctx(group, q, k, nr)
                s, rng, code, apos = _dec_sym_packed(mcdf, mcnt, ctx, mant, ac, nac, rng, code, apos)
                if s >> w:  # a w-bit mantissa
                    bad = True
                    break
                mag |= np.int64(s) << nr
            # the bits below the class (nr <= 30, none for a zero), without a
            # branch on nr: the buffer holds 32 bits or more
            if rbits < 32:
                racc, rbits, rpos = _raw_fill(raw, nraw, racc, rbits, rpos)
            rbits -= nr
            mag |= racc >> rbits
            racc &= (np.int64(1) << rbits) - 1
            v = mag
            if mag != 0:
                if predict:  # one bit, left in the buffer by the fill above
                    rbits -= 1
                    if (racc >> rbits) & 1:
                        v = -mag
                    racc &= (np.int64(1) << rbits) - 1
                else:
                    neg, rng, code, apos = _dec_bit(sgn, _sign_ctx(band, i, j, group), ac, nac, rng, code, apos)
                    if neg:
                        v = -mag
                if mag > MAX_MAG:
                    bad = True
                    mag = MAX_MAG
                    v = 0
            mp[_u(r), _u(k2)] = mag
            if predict:
                v += _med(band, i, j)
                if v > MAX_MAG or v < -MAX_MAG:
                    bad = True
                    v = 0
            band[_u(i), _u(j)] = v
            j += 1
        if bad:
            break
    st[_RNG] = rng
    st[_CODE] = code
    st[_APOS] = apos
    st[_RACC] = racc
    st[_RBITS] = rbits
    st[_RPOS] = rpos
    return bad or apos > nac + 4 or 8 * rpos - rbits > 8 * nraw


# The band coders are compiled twice, with mantissa mode a constant, so
# that the common case does not pay for the fast estimates.


@nb.njit(cache=True, nogil=True, boundscheck=False)
def _encode_plain(st, ac, raw, cdf, cnt, mcdf, mcnt, sgn, band, mp, oth, group, predict):
    return _encode_core(st, ac, raw, cdf, cnt, mcdf, mcnt, sgn, band, mp, oth, group, predict, False)


@nb.njit(cache=True, nogil=True, boundscheck=False)
def _encode_mant(st, ac, raw, cdf, cnt, mcdf, mcnt, sgn, band, mp, oth, group, predict):
    return _encode_core(st, ac, raw, cdf, cnt, mcdf, mcnt, sgn, band, mp, oth, group, predict, True)


@nb.njit(cache=True, nogil=True, boundscheck=False)
def _decode_plain(st, ac, raw, cdf, cnt, mcdf, mcnt, sgn, band, mp, oth, group, predict):
    return _decode_core(st, ac, raw, cdf, cnt, mcdf, mcnt, sgn, band, mp, oth, group, predict, False)


@nb.njit(cache=True, nogil=True, boundscheck=False)
def _decode_mant(st, ac, raw, cdf, cnt, mcdf, mcnt, sgn, band, mp, oth, group, predict):
    return _decode_core(st, ac, raw, cdf, cnt, mcdf, mcnt, sgn, band, mp, oth, group, predict, True)


def encode_band(st, ac, raw, cdf, cnt, mcdf, mcnt, sgn, band, mp, oth, group, predict, mant):
    """Code one band; return True if ``ac`` is too small (nothing usable
    was written then). ``mp`` (rows+2, cols+3, zero) receives the coded
    magnitudes; ``oth`` is the parent/cross activity (band shape);
    ``predict`` codes the MED prediction residual (LL band); ``mant``:
    mantissa mode."""
    return (_encode_mant if mant else _encode_plain)(st, ac, raw, cdf, cnt, mcdf, mcnt, sgn, band, mp, oth, group, predict)


def decode_band(st, ac, raw, cdf, cnt, mcdf, mcnt, sgn, band, mp, oth, group, predict, mant):
    """Inverse of :func:`encode_band`: fill ``band`` and ``mp``. Return
    True if a stream was read past its end or a value is out of range
    (corrupt or truncated data). ``cdf``: from ``new_tables(mant, packed=True)``."""
    return (_decode_mant if mant else _decode_plain)(st, ac, raw, cdf, cnt, mcdf, mcnt, sgn, band, mp, oth, group, predict)


@nb.njit(cache=True, nogil=True, boundscheck=False)
def mantissa_histogram(band, orient, hist):
    """Count, for every fourth row of a detail band, the top mantissa bits
    (at most 4 below the leading two) of each |v| >= 4 by (orientation,
    class); return the number of those bits."""
    bits = 0
    for i in range(0, band.shape[0], 4):
        for j in range(band.shape[1]):
            m = np.int64(band[i, j])
            if m < 0:
                m = -m
            if m < 4:
                continue
            b = _bitlen(m)
            nm = b - 2
            w = min(nm, MANT_BITS)
            q = 2 * b - 2 + ((m >> nm) & 1)
            top = (m >> (nm - w)) & ((1 << w) - 1)
            hist[((orient * 64 + min(q, 63)) * 16) + top] += 1
            bits += w
    return bits


@nb.njit(cache=True, nogil=True, boundscheck=False)
def other_activity(oth, parent, cross1, cross2, ncross):
    """Fill ``oth`` (a band's shape) with 2 * parent(min(i >> 1, pr - 1),
    min(j >> 1, pc - 1)) (nothing for an empty parent) plus the co-located
    magnitudes of the first ``ncross`` of ``cross1``, ``cross2`` where they
    cover (i, j). Row by row, with the covered spans worked out first so
    that the inner loops have no tests."""
    rows, cols = oth.shape
    pr, pc = parent.shape
    for i in range(rows):
        if pr > 0 and pc > 0:
            pi = min(i >> 1, pr - 1)
            for j in range(cols):
                oth[i, j] = 2 * parent[pi, min(j >> 1, pc - 1)]
        else:
            for j in range(cols):
                oth[i, j] = 0
        if ncross > 0 and i < cross1.shape[0]:
            for j in range(min(cols, cross1.shape[1])):
                oth[i, j] += cross1[i, j]
        if ncross > 1 and i < cross2.shape[0]:
            for j in range(min(cols, cross2.shape[1])):
                oth[i, j] += cross2[i, j]
