"""Bit-exact round trip of every pydicom / pydicom-data object with pixel
data that pydicom can decode and that the codec supports (1..16 bits).

Objects stored in a compressed transfer syntax are covered through the
decoder plugins the project depends on: pylibjpeg-libjpeg (JPEG),
pylibjpeg-openjpeg (JPEG 2000, HTJ2K), pyjpegls (JPEG-LS lossless and
near-lossless) and pydicom's own RLE and deflate support. The files left
out are listed in ``EXPECTED_SKIPS`` with the reason, so that a missing
plugin (a new "cannot decode") fails the suite instead of shrinking it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from curator import wavelet
from curator.curate import check_stored_bits
from tests.dicomdata import sample_files

MAX_FRAMES = 4  # large multi-frame files: the first frames only, to keep the suite fast
MIN_CASES = 112  # every decodable 1..16-bit object of pydicom 3.0 and pydicom-data 1.0

JPEG_LS = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}

_NOT_DICOM = "not readable by pydicom"
_NO_PIXELS = "no pixel data"
_WIDE = "32 bits stored: the codec supports 1..16"
_BROKEN = "pydicom cannot decode the pixel data"

# file name -> why it is not round-tripped (the prefix of the reason).
EXPECTED_SKIPS = {
    # not DICOM objects, or DICOM without preamble and file meta (no
    # transfer syntax, so pydicom will not decode their pixel data)
    **dict.fromkeys(
        ["README.txt", "crayons.icc", "rtplan.dump", "rtstruct.dump", "test1.json", "test_PN.json", "zipMR.gz",
         "no_meta.dcm", "ExplVR_BigEndNoMeta.dcm", "ExplVR_LitEndNoMeta.dcm", "rtstruct.dcm", "OT-PAL-8-face.dcm"],
        _NOT_DICOM,
    ),
    **dict.fromkeys(
        ["UN_sequence.dcm", "empty_charset_LEI.dcm", "no_meta_group_length.dcm", "priv_SQ.dcm", "reportsi.dcm",
         "reportsi_with_empty_number_tags.dcm", "rtplan.dcm", "rtplan_truncated.dcm", "test-SR.dcm",
         "waveform_ecg.dcm", "emri_small_jpeg_2k_lossless_too_short.dcm"],
        _NO_PIXELS,
    ),
    **dict.fromkeys(
        ["SC_rgb_32bit.dcm", "SC_rgb_32bit_2frame.dcm", "SC_rgb_expb_32bit.dcm", "SC_rgb_expb_32bit_2frame.dcm",
         "SC_rgb_rle_32bit.dcm", "SC_rgb_rle_32bit_2frame.dcm", "rtdose.dcm", "rtdose_1frame.dcm",
         "rtdose_expb.dcm", "rtdose_expb_1frame.dcm", "rtdose_rle.dcm", "rtdose_rle_1frame.dcm"],
        _WIDE,
    ),
    # deliberately broken test objects: a misplaced JPEG marker, a JPEG 2000
    # fragment cut by a sequence delimiter, truncated pixel data, a bad VR,
    # no transfer syntax, no Bits Allocated
    **dict.fromkeys(
        ["JPEG-lossy.dcm", "JPEG2000-embedded-sequence-delimiter.dcm", "MR_truncated.dcm", "badVR.dcm",
         "meta_missing_tsyntax.dcm", "nested_priv_SQ.dcm"],
        _BROKEN,
    ),
}  # fmt: skip


def _load(path: str):
    """(array, kwargs, transfer syntax) or a skip reason."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:  # not a DICOM file (dumps, JSON, no preamble)
            return f"{_NOT_DICOM}: {type(exc).__name__}"
        if "PixelData" not in ds:
            return _NO_PIXELS
        try:
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            bits = int(ds.BitsStored)
            arr = ds.pixel_array
        except Exception as exc:  # missing decoder plugin, deliberately broken file
            return f"{_BROKEN}: {type(exc).__name__}: {str(exc)[:200]}"
    if bits > 16:
        return f"{bits} bits stored: the codec supports 1..16"
    if arr.dtype.itemsize > 2:
        return f"{arr.dtype} array"
    if frames > 1:
        arr = arr[:MAX_FRAMES]
    return arr, {"frames": frames > 1, "bits_stored": bits}, str(ds.file_meta.TransferSyntaxUID)


def _cases():
    cases, skipped = [], {}
    for path in sample_files():
        got = _load(path)
        if isinstance(got, str):
            skipped[Path(path).name] = got
        else:
            cases.append((path, *got))
    return cases, skipped


CASES, SKIPPED = _cases()


def test_enough_files_tested():
    assert len(CASES) >= MIN_CASES, f"only {len(CASES)} files; skipped: {SKIPPED}"


def test_only_the_expected_files_are_skipped():
    unexpected = {n: r for n, r in SKIPPED.items() if not r.startswith(EXPECTED_SKIPS.get(n, "\0"))}
    assert not unexpected, unexpected


def test_jpeg_ls_objects_are_covered():
    """The archive keeps JPEG-LS objects as they came; pydicom decodes them
    with the pyjpegls plugin (lossless .80 and near-lossless .81)."""
    jls = sorted(Path(p).name for p, _, _, syntax in CASES if syntax in JPEG_LS)
    assert len(jls) >= 6, jls


@pytest.mark.parametrize("path,arr,kwargs,syntax", CASES, ids=[c[0].rsplit("/", 1)[-1] for c in CASES])
def test_round_trip_exact(path, arr, kwargs, syntax):
    data = wavelet.encode(arr, **kwargs)
    out = wavelet.decode(data)
    assert out.dtype == arr.dtype.newbyteorder("=")
    assert out.shape == arr.shape
    assert np.array_equal(out, arr)
    hdr = wavelet.info(data)
    assert hdr.size == len(data) and not hdr.lossy


def test_no_correct_file_uses_bits_above_bits_stored():
    """The curator refuses native pixel data with bits set above Bits
    Stored (pydicom would mask them); no file pydicom decodes exactly is
    refused, and pydicom's arrays of the native ones fit Bits Stored."""
    native = 0
    for path, arr, kwargs, _ in CASES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path)
        check_stored_bits(ds)
        if not ds.file_meta.TransferSyntaxUID.is_compressed:
            native += 1
            bits = kwargs["bits_stored"]
            lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if arr.dtype.kind == "i" else (0, (1 << bits) - 1)
            assert lo <= arr.min() and arr.max() <= hi, path
    assert native >= 40, native
