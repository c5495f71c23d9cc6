"""DICOM Upper Layer PDUs, as the acceptor needs them (PS3.8 §9.3).

Only what an association acceptor reads and writes: A-ASSOCIATE-RQ (read),
A-ASSOCIATE-AC/RJ (written), P-DATA-TF (both), A-RELEASE-RQ/RP, A-ABORT.
Decoding errors raise :class:`ProtocolError`; the association is then
aborted (PS3.8 §9.1.8).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07
PDU_TYPES = {A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ, P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT}

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"

# presentation context results, PS3.8 §9.3.3.2
PC_ACCEPTANCE = 0
PC_USER_REJECTION = 1
PC_ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
PC_TRANSFER_SYNTAXES_NOT_SUPPORTED = 4

# A-ASSOCIATE-RJ, PS3.8 §9.3.4: result, source, reason
RJ_PERMANENT = 1
RJ_SOURCE_USER = 1
RJ_REASON_NO_REASON = 1
RJ_REASON_APPLICATION_CONTEXT = 2
RJ_REASON_CALLING_AE = 3
RJ_REASON_CALLED_AE = 7
RJ_SOURCE_PROVIDER_ACSE = 2
RJ_TRANSIENT = 2
RJ_SOURCE_PROVIDER_PRESENTATION = 3
RJ_REASON_TEMPORARY_CONGESTION = 1
RJ_REASON_LOCAL_LIMIT_EXCEEDED = 2
RJ_REASON_PROTOCOL_VERSION = 2

# A-ABORT source and reasons, PS3.8 §9.3.8
ABORT_SOURCE_PROVIDER = 2
ABORT_REASON_NOT_SPECIFIED = 0
ABORT_REASON_UNRECOGNIZED_PDU = 1
ABORT_REASON_UNEXPECTED_PDU = 2
ABORT_REASON_INVALID_PARAMETER = 6

MAX_ASSOCIATE_RQ = 1 << 20  # an A-ASSOCIATE-RQ larger than this is not a modality


class ProtocolError(Exception):
    """The peer broke PS3.8; ``reason`` is the A-ABORT reason to send."""

    def __init__(self, message: str, reason: int = ABORT_REASON_INVALID_PARAMETER) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(slots=True)
class PresentationContextRQ:
    id: int
    abstract_syntax: str
    transfer_syntaxes: list[str]


@dataclass(slots=True)
class AssociateRQ:
    called_ae_title: str
    calling_ae_title: str
    application_context: str = ""
    contexts: list[PresentationContextRQ] = field(default_factory=list)
    max_pdu_length: int = 0  # 0: unlimited
    implementation_class_uid: str = ""
    implementation_version_name: str = ""


def _uid(raw: bytes) -> str:
    return raw.decode("ascii", "replace").rstrip("\x00 ").strip()


def _items(data: bytes | memoryview, start: int, end: int):  # noqa: ANN202
    """Iterate (type, value) over variable items of 1+1+2-byte headers."""
    pos = start
    while pos < end:
        if pos + 4 > end:
            raise ProtocolError("truncated variable item")
        item_type = data[pos]
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if pos + 4 + length > end:
            raise ProtocolError(f"item 0x{item_type:02X} runs past its PDU")
        yield item_type, bytes(data[pos + 4:pos + 4 + length])
        pos += 4 + length


def decode_associate_rq(body: bytes) -> AssociateRQ:
    """Decode an A-ASSOCIATE-RQ body (after the 6-byte PDU header)."""
    if len(body) < 68:
        raise ProtocolError("A-ASSOCIATE-RQ shorter than its fixed fields")
    (version,) = struct.unpack_from(">H", body, 0)
    if not version & 0x0001:
        raise ProtocolError("protocol version 1 not supported by the peer")
    rq = AssociateRQ(called_ae_title=body[4:20].decode("ascii", "replace").strip(),
                     calling_ae_title=body[20:36].decode("ascii", "replace").strip())
    for item_type, value in _items(body, 68, len(body)):
        if item_type == 0x10:
            rq.application_context = _uid(value)
        elif item_type == 0x20:
            if len(value) < 4:
                raise ProtocolError("presentation context item too short")
            cx = PresentationContextRQ(id=value[0], abstract_syntax="", transfer_syntaxes=[])
            for sub_type, sub in _items(value, 4, len(value)):
                if sub_type == 0x30:
                    cx.abstract_syntax = _uid(sub)
                elif sub_type == 0x40:
                    cx.transfer_syntaxes.append(_uid(sub))
            rq.contexts.append(cx)
        elif item_type == 0x50:
            for sub_type, sub in _items(value, 0, len(value)):
                if sub_type == 0x51 and len(sub) == 4:
                    (rq.max_pdu_length,) = struct.unpack(">I", sub)
                elif sub_type == 0x52:
                    rq.implementation_class_uid = _uid(sub)
                elif sub_type == 0x55:
                    rq.implementation_version_name = sub.decode("ascii", "replace").strip()
    return rq


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def _ae(title: str) -> bytes:
    return title.encode("ascii", "replace")[:16].ljust(16, b" ")


def encode_associate_ac(rq: AssociateRQ, results: list[tuple[int, int, str]], max_pdu: int,
                        implementation_class_uid: str, implementation_version_name: str) -> bytes:
    """A-ASSOCIATE-AC answering ``rq``; ``results`` is (context id, result,
    transfer syntax) for every proposed context, in order (PS3.8 §9.3.3)."""
    body = struct.pack(">HH", 1, 0) + _ae(rq.called_ae_title) + _ae(rq.calling_ae_title) + b"\x00" * 32
    body += _item(0x10, APPLICATION_CONTEXT.encode())
    for cx_id, result, ts in results:
        sub = _item(0x40, ts.encode()) if result == PC_ACCEPTANCE else _item(0x40, b"")
        body += _item(0x21, struct.pack(">BBBB", cx_id, 0, result, 0) + sub)
    user = _item(0x51, struct.pack(">I", max_pdu))
    user += _item(0x52, implementation_class_uid.encode())
    user += _item(0x55, implementation_version_name.encode())
    body += _item(0x50, user)
    return _pdu(A_ASSOCIATE_AC, body)


def encode_associate_rj(result: int, source: int, reason: int) -> bytes:
    return _pdu(A_ASSOCIATE_RJ, struct.pack(">BBBB", 0, result, source, reason))


def encode_release_rp() -> bytes:
    return _pdu(A_RELEASE_RP, b"\x00\x00\x00\x00")


def encode_abort(source: int = ABORT_SOURCE_PROVIDER, reason: int = ABORT_REASON_NOT_SPECIFIED) -> bytes:
    return _pdu(A_ABORT, struct.pack(">BBBB", 0, 0, source, reason))


def encode_p_data(context_id: int, payload: bytes, is_command: bool, max_pdu: int) -> list[bytes]:
    """P-DATA-TF PDUs carrying one message part, fragmented to the peer's
    maximum PDU length (0: unlimited)."""
    room = (max_pdu - 6) if max_pdu else len(payload) + 6  # PDV header: length(4) id(1) control(1)
    room = max(room, 1)
    pdus = []
    for start in range(0, max(len(payload), 1), room):
        fragment = payload[start:start + room]
        last = start + room >= len(payload)
        control = (0x01 if is_command else 0x00) | (0x02 if last else 0x00)
        pdv = struct.pack(">IBB", len(fragment) + 2, context_id, control) + fragment
        pdus.append(_pdu(P_DATA_TF, pdv))
    return pdus


def iter_pdvs(body: memoryview):  # noqa: ANN201
    """(context id, control header, fragment) of each PDV item of a P-DATA-TF."""
    pos, end = 0, len(body)
    if end == 0:
        raise ProtocolError("P-DATA-TF without any PDV item", ABORT_REASON_INVALID_PARAMETER)
    while pos < end:
        if pos + 6 > end:
            raise ProtocolError("truncated PDV item header")
        (length,) = struct.unpack_from(">I", body, pos)
        if length < 2 or pos + 4 + length > end:
            raise ProtocolError("PDV item length does not fit its PDU")
        yield body[pos + 4], body[pos + 5], body[pos + 6:pos + 4 + length]
        pos += 4 + length
