"""The HL7 message log: every message received or sent, as decoded and as
the exact bytes received, with its ACK."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

from sqlalchemy import select

from dbserver.models import Hl7Message
from services.db import first_rows, unit_of_work
from services.settings import Settings


def message_bytes(m: Hl7Message) -> bytes | None:
    """The bytes of a logged message: as received; for one we sent, its
    text in UTF-8 (what the sender framed); None for one received before
    the log kept bytes (migration 0010)."""
    if m.raw_bytes is not None:
        return bytes(m.raw_bytes)
    return m.raw.encode("utf-8") if m.direction == "out" else None


def message_row(m: Hl7Message) -> dict[str, Any]:
    """A logged message: its header, its answer, its text (``raw``) and its
    exact bytes in base64 (``raw_base64``, None where not kept)."""
    data = message_bytes(m)
    return {"id": m.id, "at": m.at.isoformat(), "direction": m.direction, "remote": m.remote,
            "message_type": m.message_type, "message_control_id": m.message_control_id,
            "sending_application": m.sending_application, "sending_facility": m.sending_facility,
            "ack_code": m.ack_code, "error": m.error, "size": len(data) if data is not None else None,
            "raw": m.raw, "raw_base64": base64.b64encode(data).decode("ascii") if data is not None else None}


def find_messages(settings: Settings, *, message_type: str | None = None, ack: str | None = None,
                  control_id: str | None = None, since: datetime | None = None,
                  limit: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """Messages newest first that match every filter given
    (``message_type`` ``ADT`` or ``ADT^A08``), at most ``limit``, and how
    many matched in all."""
    stmt = select(Hl7Message).order_by(Hl7Message.id.desc())
    if message_type:
        stmt = stmt.where(Hl7Message.message_type == message_type if "^" in message_type
                          else Hl7Message.message_type.like(f"{message_type}^%"))
    if ack:
        stmt = stmt.where(Hl7Message.ack_code == ack)
    if control_id is not None:
        stmt = stmt.where(Hl7Message.message_control_id == control_id)
    if since is not None:
        stmt = stmt.where(Hl7Message.at >= since)
    with unit_of_work(settings) as session:
        found, total = first_rows(session, stmt, limit)
        return [message_row(row[0]) for row in found], total


def get_message(settings: Settings, message_id: int) -> tuple[dict[str, Any], bytes | None] | None:
    """One logged message and its bytes; None if there is no such message."""
    with unit_of_work(settings) as session:
        m = session.get(Hl7Message, message_id)
        return None if m is None else (message_row(m), message_bytes(m))
