"""The HL7 message log: every message received or sent, raw, with its ACK."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from dbserver.models import Hl7Message
from services.db import unit_of_work
from services.settings import Settings


def list_messages(settings: Settings, limit: int = 50, raw: bool = False) -> list[dict[str, Any]]:
    """The newest ``limit`` messages, newest first."""
    with unit_of_work(settings) as session:
        rows = session.scalars(select(Hl7Message).order_by(Hl7Message.id.desc()).limit(max(1, limit)))
        out = []
        for m in rows:
            row = {"id": m.id, "at": m.at.isoformat(), "direction": m.direction, "remote": m.remote,
                   "message_type": m.message_type, "message_control_id": m.message_control_id,
                   "sending_application": m.sending_application, "sending_facility": m.sending_facility,
                   "ack_code": m.ack_code, "error": m.error}
            if raw:
                row["raw"] = m.raw.replace("\r", "\n")
            out.append(row)
        return out
