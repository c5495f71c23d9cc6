"""Bit-exact round trip of every pydicom / pydicom-data object with pixel
data that pydicom can decode and that the codec supports (1..16 bits)."""

from __future__ import annotations

import warnings

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files

from curator import wavelet

MAX_FRAMES = 4  # large multi-frame files: the first frames only, to keep the suite fast


def _load(path: str):
    """(array, kwargs) or a skip reason."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path)
        except Exception as exc:  # not a DICOM file (dumps, JSON, no preamble)
            return f"not readable by pydicom: {type(exc).__name__}"
        if "PixelData" not in ds:
            return "no pixel data"
        try:
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            bits = int(ds.BitsStored)
            arr = ds.pixel_array
        except Exception as exc:  # missing decoder plugin, deliberately broken file
            return f"pydicom cannot decode the pixel data: {type(exc).__name__}"
    if bits > 16:
        return f"{bits} bits stored: the codec supports 1..16"
    if arr.dtype.itemsize > 2:
        return f"{arr.dtype} array"
    if frames > 1:
        arr = arr[:MAX_FRAMES]
    return arr, {"frames": frames > 1, "bits_stored": max(bits, 1) if arr.dtype.itemsize * 8 >= bits else None}


def _cases():
    cases, skipped = [], {}
    for path in sorted(set(get_testdata_files("*"))):
        got = _load(path)
        if isinstance(got, str):
            skipped[path] = got
        else:
            cases.append((path, *got))
    return cases, skipped


CASES, SKIPPED = _cases()


def test_enough_files_tested():
    assert len(CASES) >= 60, f"only {len(CASES)} files; skipped: {SKIPPED}"


@pytest.mark.parametrize("path,arr,kwargs", CASES, ids=[c[0].rsplit("/", 1)[-1] for c in CASES])
def test_round_trip_exact(path, arr, kwargs):
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    values_fit = True
    if "bits_stored" in kwargs:
        bits = kwargs["bits_stored"]
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if arr.dtype.kind == "i" else (0, (1 << bits) - 1)
        values_fit = arr.min() >= lo and arr.max() <= hi
    if not values_fit:  # pixel data outside BitsStored (e.g. overlays in high bits): container width
        kwargs["bits_stored"] = arr.dtype.itemsize * 8
    data = wavelet.encode(arr, **kwargs)
    out = wavelet.decode(data)
    assert out.dtype == arr.dtype.newbyteorder("=")
    assert out.shape == arr.shape
    assert np.array_equal(out, arr)
    hdr = wavelet.info(data)
    assert hdr.size == len(data) and not hdr.lossy
