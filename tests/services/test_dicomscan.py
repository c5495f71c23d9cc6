"""The structural scan agrees with pydicom on every real file, and refuses
a dataset cut anywhere: inside a sequence, an item, an element header or a
value."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

import services.dicom as dicom
from services.dicom import file_meta_end, read_header
from services.dicomscan import Unsupported, scan
from services.errors import InvalidDicomError
from tests.dicomdata import sample_files

FILES = sample_files("*.dcm")


def _via_pydicom(data: bytes, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN202
    def refuse(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise Unsupported("compare")

    with monkeypatch.context() as m:
        m.setattr(dicom, "scan", refuse)
        return read_header(data).to_dict()


@pytest.mark.parametrize("path", FILES, ids=lambda p: Path(p).name)
def test_scan_agrees_with_pydicom(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = Path(path).read_bytes()
    try:
        expected = _via_pydicom(data, monkeypatch)
    except InvalidDicomError:
        with pytest.raises(InvalidDicomError):
            read_header(data)
        return
    assert read_header(data).to_dict() == expected


def _file(ds: Dataset, ts: str) -> bytes:
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _with_sequences() -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = "Scan^Test"
    item = Dataset()
    item.CodeValue = "T-D0050"
    item.CodingSchemeDesignator = "SRT"
    inner = Dataset()
    inner.CodeMeaning = "nested"
    item.ConceptNameCodeSequence = Sequence([inner])
    ds.AnatomicRegionSequence = Sequence([item, Dataset()])
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = b"\x01\x02" * 64
    return ds


_LONG = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}


def _element_starts(data: bytes) -> set[int]:
    """Where each top-level element begins: a dataset cut exactly there is a
    shorter whole dataset, not a truncated one."""
    ds = pydicom.dcmread(io.BytesIO(data))
    implicit = ds.original_encoding[0]
    starts = set()
    for raw in ds._dict.values():  # noqa: SLF001
        vr = raw.VR
        starts.add(raw.value_tell - (8 if implicit or vr not in _LONG else 12))
    return starts


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_every_cut_is_refused(ts: str) -> None:
    """pydicom writes undefined-length sequences and items here: every cut
    from the first dataset byte on, but at an element boundary, is refused;
    the whole file is accepted."""
    data = _file(_with_sequences(), ts)
    assert read_header(data).patient_name == "Scan^Test"
    boundaries = _element_starts(data)
    start = file_meta_end(data)
    refused = 0
    for cut in range(start + 1, len(data)):
        if cut in boundaries:
            continue
        with pytest.raises(InvalidDicomError):
            read_header(data[:cut])
        refused += 1
    assert refused > len(data) - start - len(boundaries) - 1


def test_found_values_are_raw_until_read() -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    ds = scan(data, file_meta_end(data), ExplicitVRLittleEndian, frozenset({0x00100010}))
    assert list(ds.keys()) == [0x00100010]
    assert str(ds.PatientName) == "CompressedSamples^CT1"
