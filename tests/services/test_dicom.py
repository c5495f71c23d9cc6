"""DICOM helpers: UID validation (PS3.5 §9.1), reading the indexed header
of real files in every encoding, refusing truncated datasets, and the File
Meta group written for received datasets (PS3.10 §7.1)."""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from services.dicom import file_meta_bytes, file_meta_end, read_header
from services.errors import InvalidDicomError
from services.uids import check_uid, is_valid_uid


# --- UIDs -------------------------------------------------------------------------
@pytest.mark.parametrize("uid", [
    "1.2.840.10008.5.1.4.1.1.2",
    "0",
    "1.2.3\x00",  # UI values are padded with NUL to an even length
    " 1.2.3 ",
    "1." + "2" * 62,  # 64 characters
    "2.25.329800735698586629295641978511506172918",
])
def test_check_uid_accepts(uid: str) -> None:
    assert check_uid(uid) == uid.strip().rstrip("\x00")
    assert is_valid_uid(uid)


@pytest.mark.parametrize("uid", [
    "1." + "2" * 63,  # 65 characters
    "1.2/3", "../1.2.3", "..", "1..2", "1.2.", ".1.2", "1.2.a", "abc", "1.2.3e5", "1.2 .3", "1.2\\3",
    "1.2.3;DROP TABLE studies", "１.２.３", "", "   ", None,
])
def test_check_uid_refuses(uid: object) -> None:
    with pytest.raises(InvalidDicomError):
        check_uid(uid)
    assert not is_valid_uid(uid)


def test_check_uid_leading_zeros_only_when_lenient() -> None:
    assert check_uid("1.02.3") == "1.02.3"
    with pytest.raises(InvalidDicomError):
        check_uid("1.02.3", strict=True)
    assert check_uid("1.0.3", strict=True) == "1.0.3"


def test_check_uid_message_names_what() -> None:
    with pytest.raises(InvalidDicomError, match="Study Instance UID"):
        check_uid("1.2.x", "Study Instance UID")


# --- headers of real files ------------------------------------------------------------
REAL_FILES = [
    "CT_small.dcm",                      # explicit VR little endian
    "MR_small_implicit.dcm",             # implicit VR
    "MR_small_bigendian.dcm",            # explicit VR big endian
    "image_dfl.dcm",                     # deflated
    "JPEG2000.dcm",                      # encapsulated
    "emri_small_jpeg_ls_lossless.dcm",   # multi-frame, encapsulated
    "SC_rgb_jpeg_dcmtk.dcm",
    "RG3_J2KI.dcm",                      # CR, from pydicom-data
]


@pytest.mark.parametrize("name", REAL_FILES)
def test_read_header_of_real_files(name: str) -> None:
    path = get_testdata_file(name)
    assert path, f"{name} is not available"
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    header = read_header(Path(path).read_bytes())
    assert header.sop_instance_uid == ds.SOPInstanceUID
    assert header.sop_class_uid == ds.SOPClassUID
    assert header.study_instance_uid == ds.StudyInstanceUID
    assert header.series_instance_uid == ds.SeriesInstanceUID
    assert header.transfer_syntax_uid == ds.file_meta.TransferSyntaxUID
    assert header.modality == str(ds.get("Modality", ""))
    assert header.patient_id == str(ds.get("PatientID") or "")
    assert header.patient_name == str(ds.get("PatientName") or "")
    assert header.study_date == str(ds.get("StudyDate") or "")
    assert header.rows == ds.get("Rows") and header.columns == ds.get("Columns")
    frames = ds.get("NumberOfFrames")
    assert header.number_of_frames == (int(frames) if frames not in (None, "") else None)
    assert header.to_dict()["sop_instance_uid"] == ds.SOPInstanceUID


def test_read_header_of_a_bare_dataset() -> None:
    data = Path(get_testdata_file("MR_small_implicit.dcm")).read_bytes()
    bare = data[file_meta_end(data):]
    header = read_header(bare, transfer_syntax_uid="1.2.840.10008.1.2")
    assert header.sop_instance_uid == pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
    assert header.transfer_syntax_uid == "1.2.840.10008.1.2"


def _encoded(**attrs: str) -> bytes:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "P1"
    for key, value in attrs.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", "1.2.3")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


@pytest.mark.parametrize(("attrs", "reason"), [
    ({"SOPInstanceUID": None}, "SOP Instance UID"),
    ({"StudyInstanceUID": None}, "Study Instance UID"),
    ({"SeriesInstanceUID": "1.2.abc"}, "Series Instance UID"),
    ({"StudyInstanceUID": "../../etc/passwd"}, "Study Instance UID"),
    ({"StudyInstanceUID": "1." + "9" * 70}, "Study Instance UID"),
])
def test_read_header_refuses_bad_uids(attrs: dict, reason: str) -> None:
    with pytest.raises(InvalidDicomError, match=reason):
        read_header(_encoded(**attrs))


def test_read_header_refuses_meta_naming_another_instance() -> None:
    # rtdose.dcm's file meta names another SOP Instance than its dataset
    data = Path(get_testdata_file("rtdose.dcm")).read_bytes()
    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    assert ds.file_meta.MediaStorageSOPInstanceUID != ds.SOPInstanceUID
    with pytest.raises(InvalidDicomError, match="MediaStorageSOPInstanceUID"):
        read_header(data)


@pytest.mark.parametrize("garbage", [b"", b"\x00" * 300, b"not an image\n" * 40, b"DICM" * 100])
def test_read_header_refuses_garbage(garbage: bytes) -> None:
    with pytest.raises(InvalidDicomError):
        read_header(garbage)


# --- truncated datasets -------------------------------------------------------------------
def _pixel_header_offset(data: bytes) -> tuple[int, int]:
    """Offset of the Pixel Data element's header, and the header's length."""
    ds = pydicom.dcmread(io.BytesIO(data), defer_size=None)
    raw = ds._dict[0x7FE00010]  # noqa: SLF001 - the raw element knows where its value starts
    header_len = 8 if ds.original_encoding[0] else 12
    return raw.value_tell - header_len, header_len


def _cuts() -> list[tuple[str, str]]:
    cases = []
    for name in ("CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "JPEG2000.dcm",
                 "image_dfl.dcm"):
        for where in ("last-byte", "mid-pixel-data"):
            cases.append((name, where))
    for name in ("CT_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm"):
        for where in ("in-tag", "in-length"):
            cases.append((name, where))
    return cases


@pytest.mark.parametrize(("name", "where"), _cuts())
def test_truncated_dataset_refused(name: str, where: str) -> None:
    """A dataset that stops short anywhere past its first element is not
    whole and must be refused as such: InvalidDicomError, nothing else."""
    data = Path(get_testdata_file(name)).read_bytes()
    if where == "last-byte":
        # image_dfl.dcm ends with 8 bytes after its deflate stream, which are
        # not dataset: cut into the stream itself
        cut = len(data) - (9 if name == "image_dfl.dcm" else 1)
    elif where == "mid-pixel-data":
        cut = len(data) - 100
    else:
        start, header_len = _pixel_header_offset(data)
        # "in-tag": 4 bytes of the Pixel Data element's header; "in-length":
        # all but the last 2 bytes of it (its value length is cut)
        cut = start + 4 if where == "in-tag" else start + header_len - 2
    read_header(data)  # whole, it is fine
    with pytest.raises(InvalidDicomError, match="truncated|unreadable"):
        read_header(data[:cut])


# --- file meta for received datasets ---------------------------------------------------------
@pytest.mark.parametrize("source_ae", ["MODALITY", "CT1", ""])
def test_file_meta_bytes(source_ae: str) -> None:
    sop_class, sop_uid = "1.2.840.10008.5.1.4.1.1.2", "1.2.826.0.1.3680043.8.498.1"  # odd length
    meta = file_meta_bytes(sop_class, sop_uid, "1.2.840.10008.1.2.4.90", source_ae)
    assert meta[:128] == b"\x00" * 128 and meta[128:132] == b"DICM"
    assert file_meta_end(meta) == len(meta)
    info = pydicom.dcmread(io.BytesIO(meta), force=True).file_meta
    assert info.MediaStorageSOPClassUID == sop_class
    assert info.MediaStorageSOPInstanceUID == sop_uid
    assert info.TransferSyntaxUID == "1.2.840.10008.1.2.4.90"
    assert info.FileMetaInformationVersion == b"\x00\x01"
    assert info.ImplementationClassUID and check_uid(info.ImplementationClassUID, strict=True)
    assert info.FileMetaInformationGroupLength == len(meta) - 132 - 12
    assert str(info.get("SourceApplicationEntityTitle", "")).strip() == source_ae
    # a received dataset behind it reads back as a whole Part 10 file
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    ds_bytes = data[file_meta_end(data):]
    ct = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    ct_meta = file_meta_bytes(ct.SOPClassUID, ct.SOPInstanceUID, ExplicitVRLittleEndian, source_ae)
    header = read_header(ct_meta + ds_bytes)
    assert header.sop_instance_uid == ct.SOPInstanceUID
    assert header.transfer_syntax_uid == ExplicitVRLittleEndian


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_bigendian.dcm", "image_dfl.dcm", "JPEG2000.dcm"])
def test_file_meta_end_of_real_files(name: str) -> None:
    data = Path(get_testdata_file(name)).read_bytes()
    fp = io.BytesIO(data)
    pydicom.filereader.read_preamble(fp, force=False)
    meta = pydicom.filereader._read_file_meta_info(fp)  # noqa: SLF001 - leaves fp just past group 2
    assert meta.TransferSyntaxUID
    assert file_meta_end(data) == fp.tell()
