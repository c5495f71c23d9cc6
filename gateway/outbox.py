"""The HL7 outbox sender: delivers what :mod:`dbserver.reports` queued to
the RIS of each message's domain, over MLLP, until the RIS answers AA.

Each round claims due rows with a lease (an atomic UPDATE, so several
gateways never send one row at once), sends each, and records the outcome:
``sent`` on AA (or CA), else the error and the next attempt, backing off
exponentially up to ``PACS_HL7_RETRY_MAX_SECONDS``. The message control ID
is the same on every attempt. A crash between the RIS's ACK and our commit
would send that message once more (the RIS can tell it by MSH-10); nothing
else is ever sent twice, and nothing queued is lost.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import hl7
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from dbserver.domains import report_domain
from dbserver.models import Hl7Message, Hl7Outbox, utcnow
from dbserver.reports import SENT, WAITING
from services.db import run_in_transaction, unit_of_work
from services.mllp import MllpError, escape, exchange
from services.settings import Settings

LOG = logging.getLogger(__name__)

ACCEPTED = ("AA", "CA")


def _claim(settings: Settings, limit: int) -> list[int]:
    now = utcnow()
    lease = now + timedelta(seconds=3 * settings.hl7_send_timeout_seconds + 5)
    with unit_of_work(settings) as session:
        due = list(session.scalars(select(Hl7Outbox.id).where(
            Hl7Outbox.state == WAITING, Hl7Outbox.next_attempt_at <= now,
            or_(Hl7Outbox.lease_until.is_(None), Hl7Outbox.lease_until < now)).order_by(Hl7Outbox.id).limit(limit)))
    claimed = []
    for row_id in due:
        def take(session: Session, row_id: int = row_id) -> bool:
            return session.execute(update(Hl7Outbox).where(
                Hl7Outbox.id == row_id, Hl7Outbox.state == WAITING,
                or_(Hl7Outbox.lease_until.is_(None), Hl7Outbox.lease_until < now))
                .values(lease_until=lease, attempts=Hl7Outbox.attempts + 1)).rowcount == 1

        if run_in_transaction(take, settings):
            claimed.append(row_id)
    return claimed


def _ack_code(answer: str) -> tuple[str, str]:
    """MSA-1 and MSA-3 (or ERR) of an ACK."""
    try:
        ack = hl7.parse(answer.replace("\n", "\r"))
        msa = ack.segment("MSA")
        return str(msa[1]).strip(), str(msa[3]).strip() if len(msa) > 3 else ""
    except Exception:  # noqa: BLE001 - whatever came back, it is not an AA
        return "", f"unparseable answer {answer[:80]!r}"


def _addressed(raw: str, application: str, facility: str) -> str:
    """The message with MSH-5 and MSH-6 (receiving application and
    facility) as its domain names them now: a report queued before its
    domain had a destination is addressed when it is sent."""
    head, sep, rest = raw.partition("\r")
    fields = head.split("|")
    if len(fields) > 5:
        fields[4], fields[5] = escape(application), escape(facility)
    return "|".join(fields) + sep + rest


def _send_one(settings: Settings, row_id: int) -> bool:
    with unit_of_work(settings) as session:
        msg = session.get(Hl7Outbox, row_id)
        if msg is None or msg.state != WAITING:
            return False
        raw, control_id, attempts, issuer = msg.raw, msg.message_control_id, msg.attempts, msg.issuer
        domain = report_domain(session, issuer)
        target = (domain.report_host, domain.report_port) if domain else None
        if domain is not None:
            raw = _addressed(raw, domain.receiving_application, domain.sending_facility)
    code, error, answer = "", "", ""
    if target is None:
        error = f"no RIS domain with a report destination for {issuer or 'this study'}"
    else:
        try:
            answer = exchange(target[0], int(target[1]), raw, timeout=settings.hl7_send_timeout_seconds)
            code, text = _ack_code(answer)
            if code not in ACCEPTED:
                error = f"RIS answered {code or '?'}: {text}"
        except MllpError as exc:
            error = str(exc)
    destination = f"{target[0]}:{target[1]}" if target else ""

    def record(session: Session) -> None:
        row = session.get(Hl7Outbox, row_id)
        now = utcnow()
        row.destination, row.lease_until = destination, None
        if code in ACCEPTED:
            row.state, row.sent_at, row.last_error = SENT, now, ""
        else:
            delay = min(settings.hl7_retry_max_seconds, 2.0 ** min(attempts, 20))
            row.next_attempt_at, row.last_error = now + timedelta(seconds=delay), error[:2000]
        if target is not None:
            session.add(Hl7Message(at=now, direction="out", remote=destination, raw=raw, ack_code=code[:2],
                                   error=error[:2000], message_type=row.message_type,
                                   message_control_id=control_id, sending_application="PACS",
                                   sending_facility=settings.hl7_facility))

    run_in_transaction(record, settings)
    if code in ACCEPTED:
        LOG.info("HL7 %s delivered to %s", control_id, destination)
    else:
        LOG.warning("HL7 %s not delivered (attempt %d): %s", control_id, attempts, error)
    return code in ACCEPTED


def deliver_due(settings: Settings, limit: int = 20) -> int:
    """One round: send every due message; returns how many were delivered."""
    return sum(_send_one(settings, row_id) for row_id in _claim(settings, limit))
