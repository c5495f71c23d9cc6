"""DIMSE command sets (PS3.7 §9.3, §E): always Implicit VR Little Endian,
group 0x0000 only. Decoded into a small :class:`Command`; responses are
encoded directly."""

from __future__ import annotations

import struct
from dataclasses import dataclass

from gateway.pdu import ProtocolError

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
C_FIND_RQ = 0x0020
C_FIND_RSP = 0x8020
C_CANCEL_RQ = 0x0FFF
NO_DATASET = 0x0101
DATASET_PRESENT = 0x0102

_TAG_SOP_CLASS = 0x00000002
_TAG_COMMAND_FIELD = 0x00000100
_TAG_MESSAGE_ID = 0x00000110
_TAG_RESPONDED_TO = 0x00000120
_TAG_DATASET_TYPE = 0x00000800
_TAG_STATUS = 0x00000900
_TAG_ERROR_COMMENT = 0x00000902
_TAG_SOP_INSTANCE = 0x00001000
_TAG_MOVE_ORIGINATOR_AE = 0x00001030
_TAG_MOVE_ORIGINATOR_ID = 0x00001031


@dataclass(slots=True)
class Command:
    """The fields of a request command set an SCP acts on. Attribute names
    follow the DICOM keywords, as pynetdicom's request primitives do."""

    CommandField: int
    MessageID: int
    AffectedSOPClassUID: str = ""
    AffectedSOPInstanceUID: str = ""
    CommandDataSetType: int = NO_DATASET
    MoveOriginatorApplicationEntityTitle: str = ""
    MoveOriginatorMessageID: int | None = None
    MessageIDBeingRespondedTo: int | None = None

    @property
    def has_dataset(self) -> bool:
        return self.CommandDataSetType != NO_DATASET


def _text(raw: bytes) -> str:
    return raw.decode("ascii", "replace").rstrip("\x00 ").strip()


def decode_command(data: bytes) -> Command:
    values: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if pos + 8 > end:
            raise ProtocolError("truncated command set element")
        group, elem, length = struct.unpack_from("<HHI", data, pos)
        if group != 0x0000:
            raise ProtocolError(f"command set element ({group:04X},{elem:04X}) outside group 0000")
        if pos + 8 + length > end:
            raise ProtocolError("command set element runs past the command")
        values[(group << 16) | elem] = data[pos + 8:pos + 8 + length]
        pos += 8 + length
    try:
        (field,) = struct.unpack("<H", values[_TAG_COMMAND_FIELD])
        if field == C_CANCEL_RQ:  # PS3.7 §9.3.2.3: names the request it cancels, has no Message ID
            (responded,) = struct.unpack("<H", values[_TAG_RESPONDED_TO])
            return Command(field, 0, MessageIDBeingRespondedTo=responded)
        (message_id,) = struct.unpack("<H", values[_TAG_MESSAGE_ID])
        (dataset_type,) = struct.unpack("<H", values.get(_TAG_DATASET_TYPE, b"\x01\x01"))
    except (KeyError, struct.error) as exc:
        raise ProtocolError(f"command set without a valid Command Field or Message ID ({exc})") from exc
    cmd = Command(field, message_id, _text(values.get(_TAG_SOP_CLASS, b"")),
                  _text(values.get(_TAG_SOP_INSTANCE, b"")), dataset_type,
                  _text(values.get(_TAG_MOVE_ORIGINATOR_AE, b"")))
    if len(values.get(_TAG_MOVE_ORIGINATOR_ID, b"")) == 2:
        (cmd.MoveOriginatorMessageID,) = struct.unpack("<H", values[_TAG_MOVE_ORIGINATOR_ID])
    return cmd


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def _ui(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _us(value: int) -> bytes:
    return struct.pack("<H", value)


def encode_response(request: Command, status: int, error_comment: str = "",
                    has_dataset: bool = False) -> bytes:
    """The response command set to ``request`` (C-STORE-RSP PS3.7 §9.3.1.2,
    C-FIND-RSP §9.3.2.2, C-ECHO-RSP §9.3.5.2), elements in tag order, with
    its group length."""
    field = request.CommandField | 0x8000
    parts = [_element(_TAG_SOP_CLASS, _ui(request.AffectedSOPClassUID)),
             _element(_TAG_COMMAND_FIELD, _us(field)),
             _element(_TAG_RESPONDED_TO, _us(request.MessageID)),
             _element(_TAG_DATASET_TYPE, _us(DATASET_PRESENT if has_dataset else NO_DATASET)),
             _element(_TAG_STATUS, _us(status))]
    if error_comment:
        comment = error_comment.encode("ascii", "replace")[:64]
        parts.append(_element(_TAG_ERROR_COMMENT, comment + (b" " if len(comment) % 2 else b"")))
    if request.AffectedSOPInstanceUID:
        parts.append(_element(_TAG_SOP_INSTANCE, _ui(request.AffectedSOPInstanceUID)))
    body = b"".join(parts)
    return _element(0x00000000, struct.pack("<I", len(body))) + body
