"""Thumbnails as a viewer shows the image by default, checked on their
pixels: the header's window after the Modality LUT, else the VOI LUT,
else the 1st to 99th percentile; MONOCHROME1 inverted; PALETTE COLOR
through its palette; RGB kept in colour."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ImplicitVRLittleEndian

from curator.thumbnail import PngError, png, read_png, thumbnail
from tests.dicomdata import ct_dataset


def _ramp(low: int = 0, high: int = 4095) -> np.ndarray:
    return np.linspace(low, high, 64 * 64).round().astype(np.uint16).reshape(64, 64)


def _thumb(frame: np.ndarray, ds: Dataset, bits: int = 12) -> np.ndarray:
    return read_png(thumbnail(frame, ds, bits))


def _small(image: np.ndarray) -> np.ndarray:
    """``image`` subsampled as a thumbnail of at most 128 pixels a side."""
    step = -(-max(image.shape[:2]) // 128)
    return image[::step, ::step]


def test_the_header_window_is_applied_after_the_rescale() -> None:
    ds = ct_dataset(RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=40, WindowWidth=400)
    frame = _ramp()
    out = _thumb(frame, ds)
    hu = frame.astype(int) - 1024
    assert np.all(out[hu <= 40 - 200] == 0) and np.all(out[hu >= 40 + 200] == 255)
    at_center = out[hu == 40]
    assert at_center.size and np.all(np.abs(at_center.astype(int) - 128) <= 1)  # mid-grey
    inside = out[(hu > -150) & (hu < 230)].astype(int)
    assert np.all(np.diff(inside) >= 0) and inside.min() > 0 and inside.max() < 255


def test_without_a_window_the_1st_to_99th_percentile() -> None:
    ds = ct_dataset()
    frame = _ramp(1000, 2000)
    out = _thumb(frame, ds)
    low, high = np.percentile(frame, (1, 99))
    assert np.all(out[frame <= low] == 0) and np.all(out[frame >= high] == 255)
    middle = out[np.abs(frame - (low + high) / 2) < 1]
    assert middle.size and np.all(np.abs(middle.astype(int) - 128) <= 2)


def test_monochrome1_is_inverted() -> None:
    frame = _ramp()
    plain = _thumb(frame, ct_dataset(WindowCenter=2048, WindowWidth=4096))
    inverted = _thumb(frame, ct_dataset(WindowCenter=2048, WindowWidth=4096, PhotometricInterpretation="MONOCHROME1"))
    assert plain[0, 0] == 0 and inverted[0, 0] == 255
    assert np.array_equal(inverted.astype(int), 255 - plain.astype(int))


def test_the_modality_lut_and_voi_lut_sequences_are_applied() -> None:
    """pydicom's mlut_18 (a Modality LUT Sequence) and vlut_04 (a VOI LUT
    Sequence, no window): each thumbnail as pydicom's own LUT functions
    give the image."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    voi = pydicom.dcmread(get_testdata_file("vlut_04.dcm"))
    assert "VOILUTSequence" in voi and "WindowCenter" not in voi
    bits = voi.VOILUTSequence[0].LUTDescriptor[2]
    expected = np.round(apply_voi_lut(voi.pixel_array, voi) / (2**bits - 1) * 255)
    assert np.array_equal(_thumb(voi.pixel_array, voi, voi.BitsStored), _small(expected))
    curve = ct_dataset()  # a VOI LUT that is not a straight line: squares, 16-bit output
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = [round(65535 * (v / 4095) ** 2) for v in range(4096)]
    curve.VOILUTSequence = [item]
    frame = _ramp()
    out = _thumb(frame, curve)
    assert np.array_equal(out, np.round((frame / 4095) ** 2 * 255))
    assert out[32, 32] < 100  # mid-ramp: dark, where a percentile window would be mid-grey

    mod = pydicom.dcmread(get_testdata_file("mlut_18.dcm"))
    assert "ModalityLUTSequence" in mod
    values = _small(apply_modality_lut(mod.pixel_array, mod).astype(float))
    mod.WindowCenter, mod.WindowWidth = float(np.median(values)), 201.0  # a window in the LUT's output units
    out = _thumb(mod.pixel_array, mod, mod.BitsStored)
    assert np.all(out[values <= mod.WindowCenter - 100.5] == 0)
    assert np.all(out[values > mod.WindowCenter + 99.5] == 255)


def test_palette_colour_goes_through_its_palette() -> None:
    ds = pydicom.dcmread(get_testdata_file("OT-PAL-8-face.dcm"), force=True)  # no File Meta: say what it is
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    out = _thumb(ds.pixel_array, ds, 8)
    assert out.shape == (*_small(ds.pixel_array).shape, 3)
    assert np.mean(np.abs(out[..., 0].astype(int) - out[..., 2].astype(int))) > 20  # coloured, not grey
    from pydicom.pixels import apply_color_lut

    assert np.array_equal(out, _small(apply_color_lut(ds.pixel_array, ds)) >> 8)  # 16-bit palette entries


def test_rgb_stays_colour() -> None:
    ds = pydicom.dcmread(get_testdata_file("SC_rgb_rle.dcm"))
    out = _thumb(ds.pixel_array, ds, 8)
    assert np.array_equal(out, _small(ds.pixel_array))
    wide = pydicom.dcmread(get_testdata_file("SC_rgb_rle_16bit.dcm"))
    out = _thumb(wide.pixel_array, wide, 16)
    assert out.ndim == 3 and np.array_equal(out, _small(wide.pixel_array >> 8).astype(np.uint8))


def test_read_png_refuses_damage() -> None:
    image = np.arange(30 * 20 * 3, dtype=np.uint8).reshape(30, 20, 3)
    data = png(image)
    assert np.array_equal(read_png(data), image)
    for start, length in ((0, 4), (23, 1), (45, 6), (len(data) - 6, 2)):
        bad = bytearray(data)
        bad[start:start + length] = bytes(length)
        with pytest.raises(PngError):
            read_png(bytes(bad))
    with pytest.raises(PngError):
        read_png(data[:-12])
