"""A structural scan of a little-endian DICOM dataset (PS3.5 §7).

It walks every element, sequence item and encapsulated fragment from the
first byte to the last, checking that each declared length fits and that
the last one ends exactly where the data ends, and keeps the raw values of
the few top-level tags the index reads. It decodes nothing else, so it costs
a few microseconds an element where a full parse costs tens; values are
then converted by pydicom (character sets included).

Big endian and deflated datasets are left to pydicom (:class:`Unsupported`).
"""

from __future__ import annotations

import struct

from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from services.errors import InvalidDicomError

_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
                       b"UT", b"UV"})
_ITEM, _ITEM_END, _SEQ_END = 0xE000, 0xE00D, 0xE0DD
_MAX_DEPTH = 32
_unpack_tag = struct.Struct("<HH").unpack_from
_unpack_u16 = struct.Struct("<H").unpack_from
_unpack_u32 = struct.Struct("<I").unpack_from

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
BIG_ENDIAN = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"


class Unsupported(Exception):
    """This encoding is not scanned here; use a full parser."""


def _truncated(what: str) -> InvalidDicomError:
    return InvalidDicomError(f"truncated dataset: {what}")


class _Scan:
    def __init__(self, buf: bytes, wanted: frozenset[int]) -> None:
        self.buf = buf
        self.size = len(buf)
        self.wanted = wanted
        self.found: dict[int, tuple[bytes | None, int, int]] = {}  # tag -> (VR, length, offset)

    def elements(self, pos: int, end: int | None, implicit: bool, depth: int) -> int:
        """Walk elements from ``pos`` up to ``end``; with ``end`` None, up to
        and past an item delimiter. Returns where the walk stopped."""
        buf, size = self.buf, self.size
        while end is None or pos < end:
            if pos + 8 > size:
                raise _truncated(f"element header cut at byte {pos}")
            group, elem = _unpack_tag(buf, pos)
            if group == 0xFFFE:
                if end is None and elem == _ITEM_END:
                    return pos + 8
                raise InvalidDicomError(f"unexpected delimiter (FFFE,{elem:04X}) at byte {pos}")
            if implicit:
                vr = None
                (length,) = _unpack_u32(buf, pos + 4)
                vpos = pos + 8
            else:
                vr = bytes(buf[pos + 4:pos + 6])
                if vr in _LONG_VRS:
                    if pos + 12 > size:
                        raise _truncated(f"element header cut at byte {pos}")
                    (length,) = _unpack_u32(buf, pos + 8)
                    vpos = pos + 12
                elif vr.isalpha() and vr.isupper():
                    (length,) = _unpack_u16(buf, pos + 6)
                    vpos = pos + 8
                else:
                    raise InvalidDicomError(f"no value representation at byte {pos}")
            if length == _UNDEFINED:
                if depth >= _MAX_DEPTH:
                    raise InvalidDicomError("sequences nested too deep")
                end_of_value = self.items(vpos, implicit or vr == b"UN", depth + 1)
                if depth == 0 and ((group << 16) | elem) in self.wanted:  # a sequence, delimiter included
                    self.found[(group << 16) | elem] = (vr, end_of_value - vpos, vpos)
                pos = end_of_value
                continue
            pos = vpos + length
            if pos > size:
                raise _truncated(f"element ({group:04X},{elem:04X}) declares {length} bytes, "
                                 f"{size - vpos} received")
            if depth == 0:
                tag = (group << 16) | elem
                if tag in self.wanted:
                    self.found[tag] = (vr, length, vpos)
        if pos != end:
            raise _truncated(f"an element runs past byte {end}")
        return pos

    def items(self, pos: int, implicit: bool, depth: int) -> int:
        """Walk the items of an undefined-length sequence (or the fragments
        of encapsulated pixel data) past its sequence delimiter."""
        buf, size = self.buf, self.size
        while True:
            if pos + 8 > size:
                raise _truncated("sequence not closed")
            group, elem = _unpack_tag(buf, pos)
            (length,) = _unpack_u32(buf, pos + 4)
            if group != 0xFFFE:
                raise InvalidDicomError(f"expected an item at byte {pos}")
            if elem == _SEQ_END:
                return pos + 8
            if elem != _ITEM:
                raise InvalidDicomError(f"unexpected (FFFE,{elem:04X}) in a sequence at byte {pos}")
            if length == _UNDEFINED:
                pos = self.elements(pos + 8, None, implicit, depth)
            else:
                pos += 8 + length
                if pos > size:
                    raise _truncated("an item runs past the end of the data")


# character sets whose text values decode with one Python codec (PS3.5 §6.1);
# others (ISO 2022 code extensions) are left to pydicom
_SIMPLE_CHARSETS = {"": "ascii", "ISO_IR 6": "ascii", "ISO 2022 IR 6": "ascii", "ISO_IR 100": "latin-1",
                    "ISO_IR 192": "utf-8"}
_US_TAGS = frozenset({0x00280010, 0x00280011})  # Rows, Columns
SEQUENCE_TAGS = frozenset({0x00080051})  # Issuer of Accession Number Sequence
_CHARSET_TAG = 0x00080005


def scan(buf: bytes | memoryview, start: int, transfer_syntax_uid: str, wanted: frozenset[int],
         keywords: dict[int, str] | None = None) -> Dataset | dict[str, object]:
    """Scan the dataset that starts at ``start``.

    With ``keywords`` (tag -> keyword) and a simple character set, return the
    ``wanted`` top-level values decoded directly, keyed by keyword (text as
    str, US as int, a sequence of :data:`SEQUENCE_TAGS` as its raw value).
    Otherwise return a Dataset holding only the ``wanted`` elements, raw,
    converted by pydicom on access."""
    if transfer_syntax_uid in (BIG_ENDIAN, DEFLATED):
        raise Unsupported(transfer_syntax_uid)
    implicit = transfer_syntax_uid == IMPLICIT_LE
    s = _Scan(buf, wanted)
    s.elements(start, len(buf), implicit, 0)
    if keywords is not None:
        charset = s.found.get(_CHARSET_TAG)
        name = bytes(buf[charset[2]:charset[2] + charset[1]]).decode("ascii", "replace").strip(" \x00") \
            if charset else ""
        codec = _SIMPLE_CHARSETS.get(name)
        if codec is not None:
            values: dict[str, object] = {}
            for tag, (_vr, length, vpos) in s.found.items():
                raw = bytes(buf[vpos:vpos + length])
                if tag in SEQUENCE_TAGS:  # left to the caller, raw
                    values[keywords[tag]] = raw
                elif tag in _US_TAGS:
                    values[keywords[tag]] = _unpack_u16(raw, 0)[0] if length >= 2 else None
                else:
                    values[keywords[tag]] = raw.decode(codec, "replace").rstrip("\x00 ").strip()
            return values
    ds = Dataset()
    for tag, (vr, length, vpos) in s.found.items():
        ds[Tag(tag)] = RawDataElement(Tag(tag), vr.decode() if vr else None, length,
                                       bytes(buf[vpos:vpos + length]), vpos, implicit, True)
    ds.set_original_encoding(implicit, True)
    return ds


def scan_meta(buf: bytes, end: int) -> dict[int, str]:
    """The File Meta group (explicit VR little endian, bytes 132..end) as
    tag -> text value."""
    s = _Scan(buf, frozenset({0x00020002, 0x00020003, 0x00020010, 0x00020016}))
    s.size = end
    s.elements(132, end, False, 0)
    return {tag: buf[vpos:vpos + length].decode("ascii", "replace").rstrip("\x00 ").strip()
            for tag, (_vr, length, vpos) in s.found.items()}
