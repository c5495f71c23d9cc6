"""Context-modelled entropy coding of wavelet subbands (numba).

Every coefficient ``v`` is split into a magnitude class ``c`` (0 for 0,
otherwise the bit length of ``|v|``) and ``c`` raw bits (the bits of
``|v|`` below its leading one, then the sign). The class goes through an
adaptive binary range coder (the LZMA carry-less-cache design with 16-bit
probabilities, each the mean of a fast and a slow estimate), binarised as
unary steps up or down from a pivot; the raw bits go to a separate plain bit
stream. Contexts come from already coded magnitudes: west, north, north-west,
north-east, west-west and north-north in the same band, the parent in the
coarser level and the co-located coefficients of the bands of the same level
coded before. docs/wavelet-format.md specifies all of it bit for bit.

The coder state of one chunk lives in an int64 array ``st`` (see ``_ST_*``)
so that a chunk can be coded band after band from Python.
"""

from __future__ import annotations

import numba as nb
import numpy as np

MAXC = 24  # largest magnitude class: |v| < 2**24
NODES = 2 * MAXC + 1  # per context: pivot node, MAXC up nodes, MAXC down nodes
NQL = 30  # quantised local activity
NQP = 10  # quantised parent/cross activity
NGROUPS = 7  # HL, LH, HH without parent; HL, LH, HH with parent; LL
NCTX = NGROUPS * NQL * NQP
MSTATES = 3  # mantissa bits so far: none, all zero, all one
MBASE = NCTX * NODES  # mantissa nodes follow the class nodes
NPROBS = MBASE + NGROUPS * (MAXC + 1) * MAXC * MSTATES
P_INIT = 32768
GROUP_LL = 6

# coder state slots
_LOW, _RNG, _CACHE, _CSIZE, _APOS, _RACC, _RBITS, _RPOS, _CODE = range(9)
STATE_SIZE = 9

# pivot class for each local activity level: about the class of the mean
# neighbour magnitude (speed only: every node has its own probability).
PIVOT = np.array([max(0, (q - 3) // 2) for q in range(NQL)], dtype=np.int64)


def new_probs() -> tuple[np.ndarray, np.ndarray]:
    return np.full(NPROBS, P_INIT, np.int32), np.full(NPROBS, P_INIT, np.int32)


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
def _qlog(x):
    """Half-octave quantiser: 0, 1, then 2 steps per octave."""
    if x < 2:
        return x
    b = 0
    y = x
    while y > 0:
        y >>= 1
        b += 1
    return 2 * b - 2 + ((x >> (b - 2)) & 1)


@nb.njit(inline="always")
def _bitlen(x):
    b = 0
    while x > 0:
        x >>= 1
        b += 1
    return b


@nb.njit(cache=True, nogil=True)
def encode_band(st, ac, raw, pf, ps, band, mp, oth, group, predict):
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
    limit = ac.shape[0] - 64
    for i in range(rows):
        if apos + csize + 32 * cols > limit:
            return True
        for j in range(cols):
            v = np.int64(band[i, j])
            if predict:
                if i == 0:
                    pred = np.int64(band[i, j - 1]) if j > 0 else 0
                elif j == 0:
                    pred = np.int64(band[i - 1, j])
                else:
                    wa = np.int64(band[i, j - 1])
                    na = np.int64(band[i - 1, j])
                    nw = np.int64(band[i - 1, j - 1])
                    if nw >= max(wa, na):
                        pred = min(wa, na)
                    elif nw <= min(wa, na):
                        pred = max(wa, na)
                    else:
                        pred = wa + na - nw
                v -= pred
            mag = -v if v < 0 else v
            mp[i + 2, j + 2] = mag
            r = i + 2
            k = j + 2
            local = (
                2 * (mp[r, k - 1] + mp[r - 1, k]) + mp[r - 1, k - 1] + mp[r - 1, k + 1] + ((mp[r, k - 2] + mp[r - 2, k]) >> 1)
            )
            ql = min(_qlog(local), NQL - 1)
            qp = min(_qlog(np.int64(oth[i, j])) >> 1, NQP - 1)
            base = (gbase + ql * NQP + qp) * NODES
            piv = PIVOT[ql]
            mode = 0
            t = 0
            if piv == 0:
                mode = 1
            c = _bitlen(mag)
            ms = 0
            mnode = 0
            while True:
                if mode == 0:
                    node = base
                elif mode == 1:
                    node = base + 1 + t
                elif mode == 2:
                    node = base + 1 + MAXC + t
                else:
                    node = mnode + t * MSTATES + ms
                if mode == 0:
                    bit = 1 if c >= piv else 0
                elif mode == 1:
                    bit = 1 if c > t else 0
                elif mode == 2:
                    bit = 1 if c < t else 0
                else:
                    bit = (mag >> t) & 1
                p = (pf[node] + ps[node]) >> 1
                bound = (rng >> 16) * p
                if bit == 0:
                    rng = bound
                    pf[node] += (65536 - pf[node]) >> 4
                    ps[node] += (65536 - ps[node]) >> 7
                else:
                    low += bound
                    rng -= bound
                    pf[node] -= pf[node] >> 4
                    ps[node] -= ps[node] >> 7
                while rng < 16777216:
                    rng <<= 8
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
                if mode == 0:
                    if bit == 1:
                        mode = 1
                        t = piv
                        continue
                    if piv > 1:
                        mode = 2
                        t = piv - 1
                        continue
                    t = 0
                elif mode == 1:
                    if bit == 1:
                        t += 1
                        if t < MAXC:
                            continue
                elif mode == 2:
                    if bit == 1:
                        t -= 1
                        if t > 0:
                            continue
                else:
                    # mantissa: t = bit position, ms = state
                    if ms == 0:
                        ms = 1 + bit
                    elif ms != 1 + bit:
                        ms = 3
                    t -= 1
                    if t >= 0 and ms != 3:
                        continue
                    break
                # class decided: c == t
                pass
                if t < 2:
                    break
                mode = 3
                t -= 2
                ms = 0
                mnode = MBASE + (group * (MAXC + 1) + t + 2) * MAXC * MSTATES
            # raw bits: mantissa bits below position t (if any left), then sign
            if c > 0:
                nr = t + 2 if mode == 3 else 1
                if mode == 3 and t < 0:
                    nr = 1
                val = ((mag & ((np.int64(1) << (nr - 1)) - 1)) << 1) | (1 if v < 0 else 0)
                racc = (racc << nr) | val
                rbits += nr
                while rbits >= 8:
                    rbits -= 8
                    raw[rpos] = (racc >> rbits) & 0xFF
                    rpos += 1
                racc &= (np.int64(1) << rbits) - 1
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


@nb.njit(cache=True, nogil=True)
def decode_band(st, ac, raw, pf, ps, band, mp, oth, group, predict):
    """Inverse of :func:`encode_band`: fill ``band`` and ``mp``. Return
    True if a stream was read past its end (corrupt or truncated data)."""
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
    for i in range(rows):
        for j in range(cols):
            r = i + 2
            k = j + 2
            local = (
                2 * (mp[r, k - 1] + mp[r - 1, k]) + mp[r - 1, k - 1] + mp[r - 1, k + 1] + ((mp[r, k - 2] + mp[r - 2, k]) >> 1)
            )
            ql = min(_qlog(local), NQL - 1)
            qp = min(_qlog(np.int64(oth[i, j])) >> 1, NQP - 1)
            base = (gbase + ql * NQP + qp) * NODES
            piv = PIVOT[ql]
            mode = 0
            t = 0
            if piv == 0:
                mode = 1
            c = 0
            mag = np.int64(0)
            ms = 0
            mnode = 0
            while True:
                if mode == 0:
                    node = base
                elif mode == 1:
                    node = base + 1 + t
                elif mode == 2:
                    node = base + 1 + MAXC + t
                else:
                    node = mnode + t * MSTATES + ms
                p = (pf[node] + ps[node]) >> 1
                bound = (rng >> 16) * p
                if code < bound:
                    rng = bound
                    pf[node] += (65536 - pf[node]) >> 4
                    ps[node] += (65536 - ps[node]) >> 7
                    bit = 0
                else:
                    code -= bound
                    rng -= bound
                    pf[node] -= pf[node] >> 4
                    ps[node] -= ps[node] >> 7
                    bit = 1
                while rng < 16777216:
                    rng <<= 8
                    b = 0
                    if apos < nac:
                        b = ac[apos]
                    apos += 1
                    code = ((code << 8) | b) & 0xFFFFFFFF
                if mode == 3:
                    mag |= np.int64(bit) << t
                if mode == 0:
                    if bit == 1:
                        mode = 1
                        t = piv
                        continue
                    if piv > 1:
                        mode = 2
                        t = piv - 1
                        continue
                    t = 0
                elif mode == 1:
                    if bit == 1:
                        t += 1
                        if t < MAXC:
                            continue
                elif mode == 2:
                    if bit == 1:
                        t -= 1
                        if t > 0:
                            continue
                else:
                    # mantissa: t = bit position, ms = state
                    if ms == 0:
                        ms = 1 + bit
                    elif ms != 1 + bit:
                        ms = 3
                    t -= 1
                    if t >= 0 and ms != 3:
                        continue
                    break
                # class decided: c == t
                c = t
                if t > 0:
                    mag = np.int64(1) << (t - 1)
                if t < 2:
                    break
                mode = 3
                t -= 2
                ms = 0
                mnode = MBASE + (group * (MAXC + 1) + t + 2) * MAXC * MSTATES
            v = np.int64(0)
            if c > 0:
                nr = t + 2 if mode == 3 else 1
                if mode == 3 and t < 0:
                    nr = 1
                while rbits < nr:
                    b = 0
                    if rpos < nraw:
                        b = raw[rpos]
                    rpos += 1
                    racc = (racc << 8) | b
                    rbits += 8
                rbits -= nr
                val = racc >> rbits
                racc &= (np.int64(1) << rbits) - 1
                v = mag | (val >> 1)
                if val & 1:
                    v = -v
            mp[i + 2, j + 2] = v if v >= 0 else -v
            if predict:
                if i == 0:
                    pred = np.int64(band[i, j - 1]) if j > 0 else 0
                elif j == 0:
                    pred = np.int64(band[i - 1, j])
                else:
                    wa = np.int64(band[i, j - 1])
                    na = np.int64(band[i - 1, j])
                    nw = np.int64(band[i - 1, j - 1])
                    if nw >= max(wa, na):
                        pred = min(wa, na)
                    elif nw <= min(wa, na):
                        pred = max(wa, na)
                    else:
                        pred = wa + na - nw
                v += pred
            band[i, j] = v
    st[_RNG] = rng
    st[_CODE] = code
    st[_APOS] = apos
    st[_RACC] = racc
    st[_RBITS] = rbits
    st[_RPOS] = rpos
    return apos > nac + 4 or rpos > nraw
