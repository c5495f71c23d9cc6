"""The JavaScript wavelet decoder (appserver/static/js/wavelet.js) against
the reference Python codec.

Every case is encoded with ``curator.wavelet.encode``, then decoded by
``node appserver/static/js/wavelet-cli.mjs`` at every level, from the whole
file and from the prefix that ends at that level's boundary; the shape,
dtype and SHA-256 of the samples (little-endian, C order: frame, row,
column, sample) must equal ``curator.wavelet.decode``. Lossy files are
compared sample by sample with a tolerance of 1 (the float 9/7 synthesis
could round differently on another platform; today the two decoders agree
bit for bit). Damaged files must make the CLI fail with a clear message,
and files with randomly flipped bits (CRCs fixed up) must be accepted or
rejected exactly as the reference decoder does.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

from curator import wavelet
from tests.cluster import require_services

ROOT = Path(__file__).resolve().parents[2]
CLI = ROOT / "appserver" / "static" / "js" / "wavelet-cli.mjs"


@pytest.fixture(scope="module")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        message = "node is not on PATH: the JavaScript wavelet decoder cannot be tested"
        if require_services():
            pytest.fail(message)
        pytest.skip(message)
    return path


def run_cli(node: str, path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([node, str(CLI), str(path), *args], capture_output=True, text=True, timeout=60)


def decode_js(node: str, path: Path, level: int, raw: Path | None = None) -> dict:
    args = [str(level)] + (["--out", str(raw)] if raw is not None else [])
    proc = run_cli(node, path, *args)
    assert proc.returncode == 0, f"{path.name} level {level}: {proc.stderr}"
    return json.loads(proc.stdout)


def digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<")).tobytes()).hexdigest()


def _ct_like(n: int = 512, seed: int = 1) -> np.ndarray:
    """A 12-bit CT-like slice: air, a body with soft tissue texture, bone."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:n, 0:n] - n / 2
    r2 = x * x + (1.3 * y) ** 2
    img = np.zeros((n, n))
    body = r2 < (0.42 * n) ** 2
    img[body] = 1040 + 40 * np.sin(x[body] / 17) * np.cos(y[body] / 23)
    img[(x - n / 8) ** 2 + y**2 < (n / 14) ** 2] = 2200
    img += rng.normal(0, 12, img.shape) * body
    return np.clip(img, 0, 4095).astype(np.uint16)


def _rgb(rows: int = 96, cols: int = 128) -> np.ndarray:
    y, x = np.mgrid[0:rows, 0:cols]
    return np.stack([(2 * x) % 256, (3 * y) % 256, (x + y) % 256], axis=-1).astype(np.uint8)


def _dicom(name: str) -> np.ndarray:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"pydicom test file {name} not available")
    try:
        return pydicom.dcmread(path).pixel_array
    except Exception as exc:  # no pixel data handler for its transfer syntax
        pytest.skip(f"{name}: pixel data not decodable here ({exc})")


_rng = np.random.default_rng(2024)
_ramp = np.add.outer(np.arange(64), np.arange(80))

# name -> (pixels factory, encode options)
CASES = {
    "u8": (lambda: ((_ramp * 2) % 256 + _rng.integers(0, 3, _ramp.shape)).astype(np.uint8), {}),
    "u12-noise": (lambda: np.random.default_rng(3).integers(0, 4096, (300, 200)).astype(np.uint16), {"bits_stored": 12}),
    "u16-full-range": (lambda: np.random.default_rng(4).integers(0, 65536, (37, 53)).astype(np.uint16), {}),
    "i16-signed": (lambda: _ct_like(256).astype(np.int16) - 1024, {"bits_stored": 16}),
    "i12-signed": (lambda: np.random.default_rng(5).integers(-2048, 2048, (40, 61)).astype(np.int16), {"bits_stored": 12}),
    "i8": (lambda: np.random.default_rng(6).integers(-128, 128, (40, 40)).astype(np.int8), {}),
    "1-bit": (lambda: np.random.default_rng(7).random((50, 60)) > 0.7, {}),
    "1x1": (lambda: np.array([[7]], np.uint16), {"bits_stored": 12}),
    "1xN": (lambda: np.random.default_rng(8).integers(0, 4096, (1, 100)).astype(np.uint16), {"bits_stored": 12, "levels": 3}),
    "Nx1": (lambda: np.random.default_rng(9).integers(0, 4096, (77, 1)).astype(np.uint16), {"bits_stored": 12, "levels": 3}),
    "37x53": (lambda: _ct_like(256)[100:137, 90:143], {"bits_stored": 12, "levels": 3}),
    "many-levels": (lambda: _ct_like(256)[:50, :70], {"bits_stored": 12, "levels": 8}),
    "ct-512": (lambda: _ct_like(512), {"bits_stored": 12}),
    "multi-frame": (
        lambda: np.stack([_ct_like(128, seed=s)[:, :110] for s in range(4)]),
        {"bits_stored": 12, "frames": True, "levels": 2},
    ),
    "rgb-rct": (_rgb, {}),
    "rgb-no-rct": (_rgb, {"rct": False}),
    "two-samples": (lambda: np.random.default_rng(10).integers(0, 256, (30, 31, 2)).astype(np.uint8), {}),
    "value-tables": (lambda: (np.random.default_rng(11).integers(0, 64, (100, 90)) * 64).astype(np.uint16), {"bits_stored": 12}),
    "synthetic-checkers": (
        lambda: ((np.add.outer(np.arange(200) // 16, np.arange(200) // 16) % 2) * 4000).astype(np.uint16),
        {"bits_stored": 12},
    ),
    "uint32-items": (lambda: np.random.default_rng(12).integers(0, 4096, (30, 20)).astype(np.uint32), {"bits_stored": 12}),
    "uint64-items": (lambda: np.random.default_rng(13).integers(0, 4096, (30, 20)).astype(np.uint64), {"bits_stored": 12}),
    "dicom-CT_small": (lambda: _dicom("CT_small.dcm"), {}),
    "dicom-US1_J2KR": (lambda: _dicom("US1_J2KR.dcm"), {}),
    "lossy-ct-512": (lambda: _ct_like(512), {"bits_stored": 12, "lossy_psnr": 45.0}),
    "lossy-odd": (lambda: _ct_like(256)[:37, :53], {"bits_stored": 12, "lossy_psnr": 50.0, "levels": 3}),
    "lossy-rgb": (_rgb, {"lossy_psnr": 38.0}),
    "lossy-multi-frame-signed": (
        lambda: np.stack([_ct_like(64, seed=s).astype(np.int16) - 1024 for s in range(3)]),
        {"bits_stored": 16, "frames": True, "lossy_psnr": 48.0},
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_js_decoder_matches_reference(node: str, tmp_path: Path, name: str) -> None:
    make, options = CASES[name]
    pixels = make()
    data = wavelet.encode(pixels, **options)
    meta = wavelet.info(data)
    lossy = meta.lossy
    path = tmp_path / f"{name}.pcwv"
    path.write_bytes(data)
    raw = tmp_path / "raw.bin"

    js_info = json.loads(run_cli(node, path, "--info").stdout)
    assert (js_info["rows"], js_info["columns"], js_info["frames"], js_info["samples"]) == (
        meta.rows, meta.cols, meta.frames, meta.samples)
    assert js_info["levelCount"] == meta.levels and js_info["lossy"] == lossy
    assert js_info["indexEnd"] == meta.index_end and js_info["fileSize"] == len(data)
    ends = {}
    for chunk in meta.chunks:
        ends[chunk.level] = max(ends.get(chunk.level, 0), chunk.offset + chunk.size)
    assert [lv["end"] for lv in js_info["levels"]] == [ends[k] for k in range(meta.levels + 1)]

    for level in range(meta.levels + 1):
        ref = wavelet.decode(data, level)
        prefix = tmp_path / f"{name}.prefix{level}"
        prefix.write_bytes(data[: ends[level]])
        if level == 0:
            assert ref.shape == pixels.shape
            if not lossy:
                assert np.array_equal(ref, pixels)
        for source in (path, prefix):
            got = decode_js(node, source, level, raw if lossy else None)
            what = f"{name} level {level} from {source.name}"
            assert got["shape"] == list(ref.shape), what
            assert got["dtype"] == str(ref.dtype), what
            assert got["frames"] == meta.frames and got["samples"] == meta.samples, what
            plane = ref.shape[1:3] if meta.frame_axis else ref.shape[:2]
            assert (got["rows"], got["columns"]) == plane, what
            if not lossy:
                assert got["sha256"] == digest(ref), what
            else:
                values = np.frombuffer(raw.read_bytes(), dtype=ref.dtype.newbyteorder("<")).reshape(ref.shape)
                diff = np.abs(values.astype(np.int64) - ref.astype(np.int64))
                assert diff.max() <= 1, f"{what}: differs by up to {diff.max()}"


@pytest.fixture(scope="module")
def sample_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Path]:
    data = wavelet.encode(_ct_like(128), bits_stored=12, levels=2)
    path = tmp_path_factory.mktemp("wavelet") / "ct.pcwv"
    path.write_bytes(data)
    return data, path


@pytest.mark.parametrize(
    "damage, level, error, words",
    [
        ("cut-in-header", 0, "TruncatedError", "header"),
        ("cut-in-index", 0, "TruncatedError", "index"),
        ("cut-in-last-chunk", 0, "TruncatedError", "level 0 needs the first"),
        ("cut-in-last-chunk", 2, None, None),  # level 2 is still whole
        ("cut-in-coarsest-chunk", 2, "TruncatedError", "level 2 needs the first"),
        ("flip-chunk-byte", 0, "CorruptError", "CRC-32"),
        ("flip-index-byte", 0, "CorruptError", "CRC-32"),
        ("bad-magic", 0, "UnsupportedError", "magic"),
        ("bad-version", 0, "UnsupportedError", "version"),
    ],
)
def test_js_decoder_rejects_damaged_files(node, tmp_path, sample_file, damage, level, error, words) -> None:
    data, _ = sample_file
    meta = wavelet.info(data)
    first, last = meta.chunks[0], meta.chunks[-1]
    b = bytearray(data)
    if damage == "cut-in-header":
        b = b[:25]
    elif damage == "cut-in-index":
        b = b[: meta.index_end - 10]
    elif damage == "cut-in-last-chunk":
        b = b[: last.offset + last.size // 2]
    elif damage == "cut-in-coarsest-chunk":
        b = b[: first.offset + first.size - 1]
    elif damage == "flip-chunk-byte":
        b[last.offset + last.size // 3] ^= 0x04
    elif damage == "flip-index-byte":
        b[44] ^= 0x01
    elif damage == "bad-magic":
        b[0:4] = b"PCWX"
    elif damage == "bad-version":
        b[4] = 2
    path = tmp_path / "damaged.pcwv"
    path.write_bytes(bytes(b))
    proc = run_cli(node, path, str(level))
    if error is None:
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["sha256"] == digest(wavelet.decode(data, level))
        return
    assert proc.returncode != 0
    assert proc.stdout == ""
    assert error in proc.stderr and words in proc.stderr, proc.stderr
    with pytest.raises(wavelet.WaveletError):
        wavelet.decode(bytes(b), level)


def test_js_decoder_agrees_on_damaged_chunk_contents(node, tmp_path) -> None:
    """Bits flipped inside chunks, checksums recomputed: the entropy decoder
    must accept exactly what the reference accepts, with the same output,
    and reject the rest with a CorruptError (never crash or hang)."""
    rng = np.random.default_rng(99)
    sources = [
        (rng.integers(0, 4096, (40, 50)).astype(np.uint16), {"bits_stored": 12, "levels": 2}),
        ((rng.integers(0, 8, (40, 50)) * 500).astype(np.uint16), {"bits_stored": 12, "levels": 2}),
        (_rgb(40, 50), {"levels": 2, "lossy_psnr": 40.0}),
    ]
    for n, (pixels, options) in enumerate(sources):
        data = wavelet.encode(pixels, **options)
        meta = wavelet.info(data)
        for t in range(12):
            e = int(rng.integers(len(meta.chunks)))
            chunk = meta.chunks[e]
            b = bytearray(data)
            for _ in range(int(rng.integers(1, 4))):
                b[chunk.offset + int(rng.integers(chunk.size))] ^= 1 << int(rng.integers(8))
            struct.pack_into("<I", b, 40 + 16 * e + 12, zlib.crc32(b[chunk.offset: chunk.offset + chunk.size]))
            struct.pack_into("<I", b, meta.index_end - 4, zlib.crc32(b[: meta.index_end - 4]))
            path = tmp_path / f"fuzz{n}_{t}.pcwv"
            path.write_bytes(bytes(b))
            proc = run_cli(node, path)
            try:
                ref = wavelet.decode(bytes(b))
            except wavelet.CorruptError:
                assert proc.returncode != 0 and "CorruptError" in proc.stderr, (path.name, proc.stdout, proc.stderr)
            else:
                assert proc.returncode == 0, (path.name, proc.stderr)
                assert json.loads(proc.stdout)["sha256"] == digest(ref), path.name


@pytest.mark.parametrize(
    "field, offset, fmt, value, error",
    [
        ("unknown flag", 5, "B", 0x20 | 1, "UnsupportedError"),
        ("reserved", 10, "<H", 1, "UnsupportedError"),
        ("no frames", 20, "<I", 0, "CorruptError"),
        ("bits stored 0", 6, "B", 0, "UnsupportedError"),
        ("bits stored 17", 6, "B", 17, "UnsupportedError"),
        ("item size 3", 7, "B", 3, "UnsupportedError"),
        ("no samples", 9, "B", 0, "UnsupportedError"),
        ("no rows", 12, "<I", 0, "UnsupportedError"),
        ("31 levels", 8, "B", 31, "CorruptError"),
        ("colour transform of one sample", 5, "B", 2, "CorruptError"),
        ("lossless with a step", 24, "<d", 1.5, "CorruptError"),
        ("lossless with a target", 32, "<f", 40.0, "CorruptError"),
        ("lossy without a step", 5, "B", 4, "CorruptError"),
    ],
)
def test_js_decoder_names_the_reference_error_for_bad_header_fields(
        node, tmp_path, sample_file, field, offset, fmt, value, error) -> None:
    """A header field out of its range, with the checksum made to fit: both
    decoders raise the class that section 6 of the format gives."""
    data, _ = sample_file
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    levels, frames = b[8], struct.unpack_from("<I", b, 20)[0]
    index_end = 40 + 16 * (levels + 1) * frames + 4
    if 0 < frames and index_end <= len(b):
        struct.pack_into("<I", b, index_end - 4, zlib.crc32(b[: index_end - 4]))
    path = tmp_path / "field.pcwv"
    path.write_bytes(bytes(b))
    with pytest.raises(getattr(wavelet, error)):
        wavelet.decode(bytes(b))
    proc = run_cli(node, path, "--info")
    assert proc.returncode != 0 and proc.stdout == ""
    assert f"{error}:" in proc.stderr, proc.stderr
