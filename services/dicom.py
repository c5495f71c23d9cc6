"""DICOM helpers: UID checks, the transfer syntaxes we accept, and reading
the header tags the index needs without touching pixel data."""

from __future__ import annotations

import io
import re
import struct
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

import pydicom
from pydicom import uid as _uid
from pydicom.errors import InvalidDicomError as _PydicomInvalid
from pydicom.filereader import read_sequence

from services.dicomscan import Unsupported, scan, scan_meta
from services.errors import InvalidDicomError
from services.uids import check_uid

# Transfer syntaxes accepted for storage: native, deflate and the common
# compressed ones. Objects are stored as received, never transcoded.
STORAGE_TRANSFER_SYNTAXES: list[str] = [
    _uid.ExplicitVRLittleEndian,
    _uid.ImplicitVRLittleEndian,
    _uid.ExplicitVRBigEndian,
    _uid.DeflatedExplicitVRLittleEndian,
    _uid.JPEGBaseline8Bit,
    _uid.JPEGExtended12Bit,
    _uid.JPEGLossless,
    _uid.JPEGLosslessSV1,
    _uid.JPEGLSLossless,
    _uid.JPEGLSNearLossless,
    _uid.JPEG2000Lossless,
    _uid.JPEG2000,
    _uid.HTJ2KLossless,
    _uid.HTJ2KLosslessRPCL,
    _uid.HTJ2K,
    _uid.RLELossless,
    _uid.MPEG2MPML,
    _uid.MPEG4HP41,
    _uid.MPEG4HP41BD,
]


@dataclass(slots=True)
class Header:
    """What the index keeps of one instance: read from the header only."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    patient_id: str = ""
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_date: str = ""
    study_time: str = ""
    accession_number: str = ""
    issuer_of_accession_number: str = ""
    study_id: str = ""
    study_description: str = ""
    referring_physician_name: str = ""
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    body_part_examined: str = ""
    instance_number: int | None = None
    number_of_frames: int | None = None
    rows: int | None = None
    columns: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_TEXT_TAGS = {
    "patient_id": "PatientID",
    "issuer_of_patient_id": "IssuerOfPatientID",
    "patient_name": "PatientName",
    "patient_birth_date": "PatientBirthDate",
    "patient_sex": "PatientSex",
    "study_date": "StudyDate",
    "study_time": "StudyTime",
    "accession_number": "AccessionNumber",
    "study_id": "StudyID",
    "study_description": "StudyDescription",
    "referring_physician_name": "ReferringPhysicianName",
    "modality": "Modality",
    "series_description": "SeriesDescription",
    "body_part_examined": "BodyPartExamined",
}
_INT_TAGS = {
    "series_number": "SeriesNumber",
    "instance_number": "InstanceNumber",
    "number_of_frames": "NumberOfFrames",
    "rows": "Rows",
    "columns": "Columns",
}
_DATE_ATTRS = {"patient_birth_date", "study_date"}
_KEYWORDS = {
    int(pydicom.datadict.tag_for_keyword(k)): k
    for k in (*_TEXT_TAGS.values(), *_INT_TAGS.values(), "SpecificCharacterSet", "SOPClassUID",
              "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "IssuerOfAccessionNumberSequence")
}
_WANTED = frozenset(_KEYWORDS)
_LIMITS = {"patient_name": 324, "referring_physician_name": 324, "patient_sex": 16,
           "modality": 16, "body_part_examined": 16, "study_id": 16, "study_time": 16,
           "patient_birth_date": 8, "study_date": 8}


def _text(ds: pydicom.Dataset | dict, keyword: str, limit: int) -> str:
    try:
        value = ds.get(keyword, "")
    except Exception:  # noqa: BLE001 - a malformed optional tag is not fatal
        return ""
    if value is None:
        return ""
    return str(value).strip().replace("\x00", "")[:limit]


_OLD_DA = re.compile(r"^(\d{4})\.(\d{2})\.(\d{2})$")


def _date(ds: pydicom.Dataset | dict, keyword: str) -> str:
    """A DA value as YYYYMMDD; the pre-1993 form YYYY.MM.DD is still accepted
    (PS3.5 §6.2, DA)."""
    text = _text(ds, keyword, 32)
    old = _OLD_DA.match(text)
    if old:
        return "".join(old.groups())
    return text[:8] if text[:8].isdigit() else ""


def _int(ds: pydicom.Dataset | dict, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except Exception:  # noqa: BLE001
        return None


_SEQ_DELIM_LE = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_SEQ_DELIM_BE = b"\xff\xfe\xe0\xdd\x00\x00\x00\x00"
_UNDEFINED = 0xFFFFFFFF


def _check_complete(ds: pydicom.Dataset, data: bytes, transfer_syntax_uid: str) -> None:
    """Refuse a dataset that is not whole (PS3.5 §7.1).

    pydicom reads a truncated value silently short and stops quietly inside
    a cut element header, so the last top-level element must end exactly at
    the end of the data (or, with an undefined length, the data must end with
    its delimiter); a deflated dataset must hold a complete deflate stream.
    """
    elements = ds._dict  # noqa: SLF001 - raw elements know where their values start
    if not elements:
        raise InvalidDicomError("truncated or unreadable dataset: no element could be read")
    if transfer_syntax_uid == _uid.DeflatedExplicitVRLittleEndian:
        start = file_meta_end(data) if data[128:132] == b"DICM" else 0
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            inflater.decompress(data[start:])
        except zlib.error as exc:
            raise InvalidDicomError(f"truncated or corrupt deflated dataset: {exc}") from exc
        if not inflater.eof:  # bytes after the stream's end are not dataset (some writers pad)
            raise InvalidDicomError("truncated dataset: the deflate stream is not complete")
        return
    raw = elements[next(reversed(elements))]
    tell = getattr(raw, "value_tell", None)
    if tell is None:
        return
    if raw.length == _UNDEFINED:
        if not (data.endswith(_SEQ_DELIM_LE) or data.endswith(_SEQ_DELIM_BE)):
            raise InvalidDicomError(f"truncated dataset: element {raw.tag} of undefined length is not closed")
        return
    end = tell + raw.length
    if end > len(data):
        raise InvalidDicomError(f"truncated dataset: element {raw.tag} declares {raw.length} bytes, "
                                f"{max(0, len(data) - tell)} received")
    if end < len(data):
        raise InvalidDicomError(f"truncated dataset: {len(data) - end} bytes after element {raw.tag} "
                                "do not make a whole element")


def read_header(data: bytes, transfer_syntax_uid: str | None = None) -> Header:
    """Check that a DICOM file (with or without file meta) is whole and
    return what the index needs. Element values other than those indexed are
    never decoded, and pixel data is never decompressed.

    Raises :class:`InvalidDicomError` with a reason a modality operator can act
    on: unreadable or truncated dataset, missing or malformed UIDs.
    """
    try:
        if len(data) >= 144 and data[128:132] == b"DICM":
            meta_end = file_meta_end(data)
            meta = scan_meta(data, meta_end)
            ts = transfer_syntax_uid or meta.get(0x00020010, "")
            try:
                ds = scan(data, meta_end, ts, _WANTED, _KEYWORDS)
            except Unsupported:
                pass
            except InvalidDicomError as exc:
                if str(exc).startswith("truncated"):
                    raise
                # not the encoding its transfer syntax says (real files do
                # this): pydicom's heuristics get the last word
            else:
                return _to_header(ds, ts, meta.get(0x00020002, ""), meta.get(0x00020003, ""))
        ds = pydicom.dcmread(io.BytesIO(data), force=True)
        file_meta = getattr(ds, "file_meta", None)
        ts = str(transfer_syntax_uid or (file_meta.get("TransferSyntaxUID", "") if file_meta else ""))
        _check_complete(ds, data, ts)
    except InvalidDicomError:
        raise
    except (_PydicomInvalid, EOFError, ValueError, KeyError, TypeError, OSError, AttributeError,
            NotImplementedError, struct.error, zlib.error) as exc:
        raise InvalidDicomError(f"unreadable dataset: {exc}") from exc
    file_meta = getattr(ds, "file_meta", None)
    return _to_header(ds, ts, str(file_meta.get("MediaStorageSOPClassUID", "")) if file_meta else "",
                      str(file_meta.get("MediaStorageSOPInstanceUID", "")) if file_meta else "")


def read_header_parts(file_meta: bytes, dataset: bytes) -> Header:
    """:func:`read_header` of ``file_meta + dataset`` without joining them
    (the received dataset is scanned where it lies)."""
    if len(file_meta) >= 144 and file_meta[128:132] == b"DICM":
        try:
            meta = scan_meta(file_meta, len(file_meta))
            ts = meta.get(0x00020010, "")
            ds = scan(dataset, 0, ts, _WANTED, _KEYWORDS)
        except (Unsupported, InvalidDicomError, struct.error, ValueError):
            pass  # the full path below decides, with the right message
        else:
            return _to_header(ds, ts, meta.get(0x00020002, ""), meta.get(0x00020003, ""))
    return read_header(file_meta + dataset)


def _issuer_of_accession_number(ds: pydicom.Dataset | dict, ts: str) -> str:
    """The first item of the Issuer of Accession Number Sequence (0008,0051;
    PS3.3 C.7.2.1, HL7v2 Hierarchic Designator Macro): its Local Namespace
    Entity ID, else its Universal Entity ID. "" when absent or unreadable."""
    try:
        value = ds.get("IssuerOfAccessionNumberSequence")
        if isinstance(value, bytes):  # the scan's raw value
            charset = ds.get("SpecificCharacterSet") or "ISO_IR 6"
            value = read_sequence(io.BytesIO(value), ts == _uid.ImplicitVRLittleEndian, True, len(value),
                                  [c.strip() for c in str(charset).split("\\")])
        item = value[0] if value else None
        if item is None:
            return ""
        for keyword in ("LocalNamespaceEntityID", "UniversalEntityID"):
            text = _text(item, keyword, 64)
            if text:
                return text
    except Exception:  # noqa: BLE001 - a malformed optional sequence is not fatal
        return ""
    return ""


def _to_header(ds: pydicom.Dataset | dict, ts: str, meta_sop_class: str, meta_sop_instance: str) -> Header:
    try:
        header = Header(
            sop_instance_uid=check_uid(ds.get("SOPInstanceUID"), "SOP Instance UID"),
            sop_class_uid=check_uid(ds.get("SOPClassUID") or meta_sop_class, "SOP Class UID"),
            study_instance_uid=check_uid(ds.get("StudyInstanceUID"), "Study Instance UID"),
            series_instance_uid=check_uid(ds.get("SeriesInstanceUID"), "Series Instance UID"),
            transfer_syntax_uid=check_uid(ts, "Transfer Syntax UID") if ts else "",
        )
    except (ValueError, TypeError, AttributeError) as exc:  # a UID value pydicom cannot read
        raise InvalidDicomError(f"unreadable UID: {exc}") from exc
    for attr, keyword in _TEXT_TAGS.items():
        if attr in _DATE_ATTRS:
            setattr(header, attr, _date(ds, keyword))
        else:
            setattr(header, attr, _text(ds, keyword, _LIMITS.get(attr, 64)))
    for attr, keyword in _INT_TAGS.items():
        setattr(header, attr, _int(ds, keyword))
    header.issuer_of_accession_number = _issuer_of_accession_number(ds, ts)
    if meta_sop_instance and meta_sop_instance.strip() != header.sop_instance_uid:
        raise InvalidDicomError(
            "file meta MediaStorageSOPInstanceUID differs from the dataset's SOP Instance UID"
        )
    return header


def _meta_element(group_elem: int, vr: bytes, value: bytes) -> bytes:
    """One explicit VR little endian element of the File Meta group."""
    if len(value) % 2:
        value += b"\x00" if vr == b"UI" else b" "
    tag = struct.pack("<HH", 0x0002, group_elem)
    if vr == b"OB":
        return tag + vr + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return tag + vr + struct.pack("<H", len(value)) + value


def file_meta_bytes(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
                    source_ae: str = "") -> bytes:
    """The 128-byte preamble, ``DICM`` and a File Meta Information group
    (PS3.10 §7.1) for a dataset received over the network. Built directly:
    this runs once per received instance."""
    body = b"".join([
        _meta_element(0x0001, b"OB", b"\x00\x01"),
        _meta_element(0x0002, b"UI", sop_class_uid.encode("ascii")),
        _meta_element(0x0003, b"UI", sop_instance_uid.encode("ascii")),
        _meta_element(0x0010, b"UI", transfer_syntax_uid.encode("ascii")),
        _meta_element(0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode("ascii")),
        _meta_element(0x0013, b"SH", IMPLEMENTATION_VERSION_NAME.encode("ascii")),
        _meta_element(0x0016, b"AE", source_ae.encode("ascii", "replace")) if source_ae else b"",
    ])
    group_length = struct.pack("<HH", 0x0002, 0x0000) + b"UL" + struct.pack("<HI", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + body


IMPLEMENTATION_CLASS_UID = "2.25.31429545862299478145401841709000354686"
IMPLEMENTATION_VERSION_NAME = "PACSCLUSTER_01"


def file_meta_end(data: bytes) -> int:
    """Offset just past the File Meta Information group of a Part 10 file."""
    pos = 132
    # (0002,0000) UL group length: tag(4) VR(2) len(2) value(4)
    if data[pos:pos + 4] == b"\x02\x00\x00\x00" and data[pos + 4:pos + 6] == b"UL":
        group_len = struct.unpack("<I", data[pos + 8:pos + 12])[0]
        return pos + 12 + group_len
    # no group length: walk explicit VR little endian group 2 elements
    while pos + 8 <= len(data) and data[pos:pos + 2] == b"\x02\x00":
        vr = data[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            length = struct.unpack("<I", data[pos + 8:pos + 12])[0]
            pos += 12 + length
        else:
            length = struct.unpack("<H", data[pos + 6:pos + 8])[0]
            pos += 8 + length
    return pos

