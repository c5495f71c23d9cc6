"""Progressive prefixes, random images, corrupt input and lossy mode."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from curator import wavelet
from curator.wavelet import _lifting, _values


def _planes(arr, frames=False):
    a = arr.astype(np.int32)
    if not frames:
        a = a[None]
    if a.ndim == 3:
        a = a[..., None]
    return a


def _reference(arr, level, bits, signed, frames=False):
    """The LL image at ``level`` computed with the reference lifting, laid
    out and clipped as ``decode`` returns it: of the value indices, looked
    up in the value table, for the planes the encoder gives a table."""
    planes = _planes(arr, frames)
    tables = {}
    for f in range(planes.shape[0]):
        for s in range(planes.shape[-1]):
            t = _values.choose(planes[f, :, :, s])
            if t is not None:
                planes[f, :, :, s] = t.indices(planes[f, :, :, s])
                tables[f, s] = t
    rct = planes.shape[-1] == 3
    ll = _lifting.lowpass(planes, level, rct)
    for (f, s), t in tables.items():
        ll[f, :, :, s] = t.values[np.clip(ll[f, :, :, s], 0, len(t.values) - 1)]
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    ll = np.clip(ll, lo, hi)
    if not frames:
        ll = ll[0]
    if arr.ndim == (3 if frames else 2):
        ll = ll[..., 0]
    return ll.astype(arr.dtype)


@pytest.fixture(scope="module")
def ct():
    return pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array


@pytest.fixture(scope="module")
def mr_frames():
    return pydicom.dcmread(get_testdata_file("emri_small.dcm")).pixel_array  # 10 x 64 x 64, 12 bits


def _check_prefixes(arr, data, bits, frames=False):
    hdr = wavelet.info(data)
    ends = [hdr.level_end(k) for k in range(hdr.levels, -1, -1)]
    assert ends == sorted(ends) and ends[-1] == len(data)
    for k in range(hdr.levels + 1):
        end = hdr.level_end(k)
        got = wavelet.decode(data[:end], level=k)
        assert got.shape == hdr.level_shape(k)
        assert np.array_equal(got, _reference(arr, k, bits, arr.dtype.kind == "i", frames)), k
        with pytest.raises(wavelet.TruncatedError):
            wavelet.decode(data[: end - 1], level=k)


def test_every_level_boundary_prefix_decodes_that_level(ct):
    data = wavelet.encode(ct, levels=4)
    assert wavelet.info(data).levels == 4
    _check_prefixes(ct, data, 16)


def test_multiframe_prefix_gives_every_frame_coarse_level(mr_frames):
    data = wavelet.encode(mr_frames, frames=True, bits_stored=12, levels=3)
    hdr = wavelet.info(data)
    assert hdr.frames == 10 and hdr.frame_axis
    coarse = [c for c in hdr.chunks if c.level == 3]
    assert max(c.end for c in coarse) == hdr.level_end(3) <= min(c.offset for c in hdr.chunks if c.level < 3)
    _check_prefixes(mr_frames, data, 12, frames=True)


def _sparse(rows=200, cols=300, seed=5):
    """A synthetic 12-bit pattern using 40 of its 4096 values (blocks,
    a ramp, noise on some blocks), as test patterns and LUT-ed images are."""
    rng = np.random.default_rng(seed)
    levels = np.sort(rng.choice(4096, 40, replace=False))
    idx = (np.add.outer(np.arange(rows) // 25, np.arange(cols) // 30) * 3) % 40
    idx[:, -40:] = (np.arange(rows) * 40 // rows)[:, None]
    noisy = rng.random((rows, cols)) < 0.2
    idx = np.where(noisy, np.clip(idx + rng.integers(-1, 2, (rows, cols)), 0, 39), idx)
    return levels[idx].astype(np.uint16)


def test_sparse_values_are_coded_as_table_indices():
    arr = _sparse()
    data = wavelet.encode(arr, bits_stored=12)
    assert len(data) < 0.7 * len(wavelet.encode(arr, bits_stored=12, value_tables=False))
    assert np.array_equal(wavelet.decode(data), arr)
    _check_prefixes(arr, data, 12)
    assert set(np.unique(wavelet.decode(data[: wavelet.info(data).level_end(2)], level=2))) <= set(np.unique(arr))


def test_value_tables_per_frame_and_sample():
    a = _sparse(64, 80)
    b = (_sparse(64, 80, seed=9) // 16).astype(np.uint16)  # another table
    rgb = np.stack([a, np.full_like(a, 7), b], axis=-1)
    frames = np.stack([rgb, rgb[::-1]])
    data = wavelet.encode(frames, bits_stored=12, frames=True, levels=2)
    assert np.array_equal(wavelet.decode(data), frames)
    _check_prefixes(frames, data, 12, frames=True)


def _with_chunk(data, chunk, body: bytes) -> bytes:
    """``data`` with ``chunk`` replaced by ``body``, checksums rewritten."""
    from curator.wavelet import _container

    hdr = wavelet.info(data)
    blobs = [[bytes(data[c.offset : c.end]) if c != chunk else body for c in hdr.chunks if c.frame == f][::-1]
             for f in range(hdr.frames)]  # fmt: skip
    fields = dict(rows=hdr.rows, cols=hdr.cols, frames=hdr.frames, samples=hdr.samples, bits_stored=hdr.bits_stored,
                  itemsize=hdr.itemsize, levels=hdr.levels, flags=data[5], quant_step=0.0, target_psnr=0.0,
                  recon_offset=0.0)  # fmt: skip
    return _container.pack(fields, blobs)


def test_damaged_value_table_is_corrupt():
    arr = _sparse()
    data = wavelet.encode(arr, bits_stored=12)
    chunk = wavelet.info(data).chunks[0]
    body = bytearray(data[chunk.offset : chunk.end])
    assert body[0] & 2  # the coarsest chunk holds the table: u8 flags, i32 first, u32 span, bitmap
    assert np.array_equal(wavelet.decode(_with_chunk(data, chunk, bytes(body))), arr)
    first, span = int.from_bytes(body[1:5], "little", signed=True), int.from_bytes(body[5:9], "little")
    assert first == arr.min() and first + span - 1 == arr.max()
    for pos, value in [(1, 0xFF), (5, 0xFF), (8, 0x10), (9, body[9] & 0xFE)]:  # first, span, bit 0
        bad = bytearray(body)
        bad[pos] = value
        with pytest.raises(wavelet.CorruptError):
            wavelet.decode(_with_chunk(data, chunk, bytes(bad)))
    rng = np.random.default_rng(11)
    for _ in range(20):  # other bitmap damage: an error or an image, never a crash
        bad = bytearray(body)
        bad[int(rng.integers(9, 9 + (span + 7) // 8))] ^= 1 << int(rng.integers(0, 8))
        try:
            out = wavelet.decode(_with_chunk(data, chunk, bytes(bad)))
        except wavelet.WaveletError:
            continue
        assert out.shape == arr.shape


def test_compiled_lifting_matches_the_numpy_reference():
    """The numba passes (forward and inverse) against the vectorised
    numpy lifting they replace, odd and even lengths, 1..9 samples."""
    rng = np.random.default_rng(2)
    for rows in range(1, 10):
        for cols in range(1, 10):
            x = rng.integers(-70000, 70000, (rows, cols)).astype(np.int32)
            for axis in (0, 1):
                lo, hi = _lifting._split(x, axis)
                fast = _lifting._split_fast(x, axis)
                assert all(np.array_equal(a, b) and a.shape == b.shape for a, b in zip((lo, hi), fast))
                merged = _lifting._merge_fast(lo, hi, axis)
                assert np.array_equal(merged, _lifting._merge(lo, hi, axis)) and np.array_equal(merged, x)


def test_index_describes_byte_ranges(ct):
    data = wavelet.encode(ct)
    hdr = wavelet.info(data[: wavelet.info(data).index_end])  # the index alone is enough
    assert (hdr.rows, hdr.cols, hdr.frames, hdr.samples, hdr.bits_stored, hdr.signed) == (128, 128, 1, 1, 16, True)
    assert hdr.levels == wavelet.default_levels(128, 128) == 1
    assert hdr.chunks[0].offset == hdr.index_end
    for a, b in zip(hdr.chunks, hdr.chunks[1:]):
        assert a.end == b.offset


def test_info_of_short_prefix_is_truncated(ct):
    data = wavelet.encode(ct)
    for n in (0, 3, 20, wavelet.info(data).index_end - 1):
        with pytest.raises(wavelet.TruncatedError):
            wavelet.info(data[:n])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.integers(1, 300),
    cols=st.integers(1, 300),
    bits=st.integers(1, 16),
    signed=st.booleans(),
    samples=st.sampled_from([1, 3]),
    frames=st.integers(1, 3),
    smooth=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    levels=st.none() | st.integers(0, 6),
)
def test_random_images_round_trip(rows, cols, bits, signed, samples, frames, smooth, seed, levels):
    rng = np.random.default_rng(seed)
    if rows * cols * frames > 40_000:  # keep the property test fast
        rows = max(1, 40_000 // (cols * frames))
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    shape = (frames, rows, cols, samples)
    if smooth:
        base = np.cumsum(np.cumsum(rng.integers(-2, 3, shape), axis=1), axis=2)
        a = np.clip(base + (lo + hi) // 2, lo, hi)
    else:
        a = rng.integers(lo, hi, size=shape, endpoint=True)
    dtype = (np.int16 if bits > 8 else np.int8) if signed else (np.uint16 if bits > 8 else np.uint8)
    a = a.astype(dtype)
    if samples == 1:
        a = a[..., 0]
    multi = frames > 1
    if not multi:
        a = a[0]
    data = wavelet.encode(a, bits_stored=bits, frames=multi, levels=levels)
    out = wavelet.decode(data)
    assert out.dtype == a.dtype and np.array_equal(out, a)
    hdr = wavelet.info(data)
    for k in range(hdr.levels, 0, -1):  # every level boundary, coarsest first (level 0 is ``out``)
        got = wavelet.decode(data[: hdr.level_end(k)], k)
        assert got.shape == hdr.level_shape(k)
        assert np.array_equal(got, _reference(a, k, bits, signed, multi)), k


def test_big_endian_input_decodes_to_the_same_values_in_native_byte_order():
    """What ``decode`` documents: the same kind and item size, native order."""
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array
    for arr in (ct.astype(">i2"), (ct.astype(np.int32) + 30000).astype(">u2")):
        out = wavelet.decode(wavelet.encode(arr))
        assert out.dtype == arr.dtype.newbyteorder("=") and out.dtype.isnative
        assert np.array_equal(out, arr)


def test_values_outside_bits_stored_are_an_error():
    with pytest.raises(wavelet.InvalidInputError):
        wavelet.encode(np.array([[0, 4096]], np.uint16), bits_stored=12)
    with pytest.raises(wavelet.InvalidInputError):
        wavelet.encode(np.array([[-2049, 0]], np.int16), bits_stored=12)
    with pytest.raises(ValueError):  # InvalidInputError is also a ValueError
        wavelet.encode(np.array([[2, 0]], np.uint8), bits_stored=1)
    with pytest.raises(wavelet.InvalidInputError):
        wavelet.encode(np.zeros((4, 4), np.uint32))  # needs bits_stored
    with pytest.raises(wavelet.InvalidInputError):
        wavelet.encode(np.zeros((4, 4), np.float32))
    with pytest.raises(wavelet.InvalidInputError):
        wavelet.encode(np.zeros((4, 4), np.uint16), bits_stored=17)
    assert wavelet.decode(wavelet.encode(np.zeros((4, 4), np.uint32), bits_stored=16)).dtype == np.uint32


def test_wrong_magic_and_version(ct):
    data = bytearray(wavelet.encode(ct))
    with pytest.raises(wavelet.UnsupportedError):
        wavelet.decode(b"JUNK" + bytes(data[4:]))
    data[4] = 99
    with pytest.raises(wavelet.UnsupportedError):
        wavelet.decode(bytes(data))
    with pytest.raises(wavelet.InvalidInputError):
        wavelet.decode(wavelet.encode(ct), level=9)


def test_flipped_bytes_raise_package_errors(ct):
    data = wavelet.encode(ct)
    rng = np.random.default_rng(7)
    for pos in [*range(0, wavelet.info(data).index_end), *rng.integers(0, len(data), 150)]:
        bad = bytearray(data)
        bad[pos] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(wavelet.WaveletError):
            wavelet.decode(bytes(bad))
    for n in rng.integers(0, len(data), 30):
        with pytest.raises(wavelet.WaveletError):
            wavelet.decode(data[:n])


def test_damaged_chunk_body_never_hangs(ct):
    """Garbage that passes the checksums (rewritten CRCs): the entropy
    decoder must end and raise, or return an image, never crash."""
    import zlib

    from curator.wavelet import _container

    data = wavelet.encode(ct)
    hdr = wavelet.info(data)
    rng = np.random.default_rng(3)
    for trial in range(20):
        body = bytearray(data)
        chunk = hdr.chunks[trial % len(hdr.chunks)]
        for pos in rng.integers(chunk.offset + 4, chunk.end, 8):
            body[pos] = int(rng.integers(0, 256))
        # recompute the chunk CRC and the header CRC
        blobs = [[bytes(body[c.offset : c.end]) for c in sorted(hdr.chunks, key=lambda c: -c.level) if c.frame == f]
                 for f in range(hdr.frames)]  # fmt: skip
        blobs = [list(reversed(b)) for b in blobs]
        fields = dict(rows=hdr.rows, cols=hdr.cols, frames=hdr.frames, samples=hdr.samples,
                      bits_stored=hdr.bits_stored, itemsize=hdr.itemsize, levels=hdr.levels, flags=1,
                      quant_step=0.0, target_psnr=0.0, recon_offset=0.0)  # fmt: skip
        rebuilt = _container.pack(fields, blobs)
        assert zlib.crc32(rebuilt) != zlib.crc32(data) or trial
        try:
            out = wavelet.decode(rebuilt)
        except wavelet.WaveletError:
            continue
        assert out.shape == ct.shape


def test_damaged_runs_signs_and_tables_never_hang():
    """The same for a synthetic pattern, whose chunks use value tables,
    zero runs, context-coded signs and mantissa mode."""
    arr = _sparse(160, 200)
    data = wavelet.encode(arr, bits_stored=12)
    hdr = wavelet.info(data)
    rng = np.random.default_rng(4)
    for trial in range(30):
        chunk = hdr.chunks[trial % len(hdr.chunks)]
        body = bytearray(data[chunk.offset : chunk.end])
        for pos in rng.integers(1, len(body), 6):
            body[pos] = int(rng.integers(0, 256))
        try:
            out = wavelet.decode(_with_chunk(data, chunk, bytes(body)))
        except wavelet.WaveletError:
            continue
        assert out.shape == arr.shape


def _psnr(a, b, peak):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 10 * np.log10(peak**2 / mse) if mse else np.inf


@pytest.mark.parametrize("target", [40.0, 50.0])
def test_lossy_meets_target_psnr(target):
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    arr = ds.pixel_array
    data = wavelet.encode(arr, lossy_psnr=target)
    hdr = wavelet.info(data)
    assert hdr.lossy and hdr.target_psnr == target and hdr.quant_step > 0
    out = wavelet.decode(data)
    assert out.dtype == arr.dtype and out.shape == arr.shape
    assert _psnr(arr, out, 2**16 - 1) >= target
    assert len(data) < len(wavelet.encode(arr))
    preview = wavelet.decode(data[: hdr.level_end(1)], level=1)
    assert preview.shape == (32, 32)


def test_lossy_real_ct_and_lossless_flag(ct):
    data = wavelet.encode(ct, lossy_psnr=45, bits_stored=16)
    assert wavelet.info(data).lossy
    assert _psnr(ct, wavelet.decode(data), 2**16 - 1) >= 45
    assert not wavelet.info(wavelet.encode(ct)).lossy
