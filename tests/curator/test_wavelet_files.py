"""Bit-exact round trip of every pydicom / pydicom-data object with pixel
data that pydicom can decode and that the codec supports (1..16 bits)."""

from __future__ import annotations

import warnings
from pathlib import Path

import data_store
import numpy as np
import pydicom
import pydicom.data
import pytest

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
    return arr, {"frames": frames > 1, "bits_stored": bits}


def _files() -> list[str]:
    """pydicom's test files and pydicom-data's, listed directly (the
    ``get_testdata_files`` lookup also tries to download missing ones)."""
    own = Path(pydicom.data.__file__).parent / "test_files"
    extra = Path(data_store.__file__).parent / "data"
    return sorted(str(p) for p in [*own.iterdir(), *extra.glob("*.dcm")] if p.is_file())


def _cases():
    cases, skipped = [], {}
    for path in _files():
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
    data = wavelet.encode(arr, **kwargs)
    out = wavelet.decode(data)
    assert out.dtype == arr.dtype.newbyteorder("=")
    assert out.shape == arr.shape
    assert np.array_equal(out, arr)
    hdr = wavelet.info(data)
    assert hdr.size == len(data) and not hdr.lossy
