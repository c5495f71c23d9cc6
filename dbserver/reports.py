"""Reports on studies, and the outbox that takes them to the RIS.

A final report is stored, the study becomes ``reported``, and an ORU^R01
(HL7 v2.5.1 §7.3.1, as IHE RAD-28 fills it) is put in the HL7 outbox in the
same transaction: once :func:`add_report` returns, the report reaches the
RIS of the study's domain after any restart. The gateway's sender
(:mod:`gateway.outbox`) delivers it and keeps retrying until ACK AA.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from dbserver.domains import report_domain
from dbserver.models import Change, Hl7Outbox, Order, Patient, Report, RisDomain, Study, utcnow
from dbserver.patients import NO_PATIENT_ID
from dbserver.queries import audit
from dbserver.validation import HIDDEN
from services.db import run_in_transaction, unit_of_work
from services.mllp import escape, hl7_timestamp, xpn
from services.settings import Settings
from services.uids import check_uid

FINAL = "final"
REPORTED = "reported"
MAX_REPORT_CHARS = 1_000_000
WAITING, SENT, CANCELLED = "waiting", "sent", "cancelled"  # states of an outbox message


class ReportError(ValueError):
    """The report cannot be taken (unknown or hidden study, empty text)."""


def _segment(name: str, fields: dict[int, str]) -> str:
    """A segment with these (already escaped) fields at their positions."""
    return "|".join([name] + [fields.get(i, "") for i in range(1, max(fields) + 1)])


def ndl(person_name: str) -> str:
    """A DICOM PN (family^given^middle^prefix^suffix, alphabetic group) as
    the HL7 NDL of OBR-32 (v2.5.1 chapter 2A, NDL): its first component, a
    CNN, holds the name in sub-components ID&family&given&middle&suffix&
    prefix (each escaped). We know no ID: the first sub-component stays
    empty."""
    parts = (person_name.split("=")[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (escape(p.strip()) for p in parts)
    return f"&{family}&{given}&{middle}&{suffix}&{prefix}".rstrip("&")


def procedure_ce(order: Order | None, study: Study) -> str:
    """OBR-4 (CE: identifier^text^name of coding system): the order's code^text^coding scheme as the
    RIS sent it in OBR-4; without an order, the study description as text."""
    if order is None:
        return f"^{escape(study.study_description)}".rstrip("^")
    parts = (order.procedure_code_value, order.requested_procedure_description or study.study_description,
             order.procedure_coding_scheme if order.procedure_code_value else "")
    return "^".join(escape(p) for p in parts).rstrip("^")


def text_lines(text: str) -> list[str]:
    """The report's lines as OBX TX values: blank lines inside the text are
    kept (empty OBX-5, a paragraph break), blank lines at its end are not."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def oru_message(report: Report, study: Study, patient: Patient, order: Order | None,
                domain: RisDomain | None, settings: Settings, control_id: str) -> str:
    """The ORU^R01 carrying ``report``: one OBX per line of text (TX), the
    Study Instance UID as an OBX of its own, result status F."""
    issuer = "" if patient.issuer_of_patient_id.startswith(NO_PATIENT_ID) else patient.issuer_of_patient_id
    placer = escape(order.placer_order_number) if order else ""
    filler = escape(order.filler_order_number) if order else ""
    when = hl7_timestamp(report.created_at)
    segments = [
        f"MSH|^~\\&|PACS|{escape(settings.hl7_facility)}|{escape(domain.receiving_application) if domain else ''}|"
        f"{escape(domain.sending_facility) if domain else ''}|{hl7_timestamp()}||ORU^R01^ORU_R01|{control_id}|P|"
        "2.5.1|||AL|NE||UNICODE UTF-8",
        f"PID|1||{escape(patient.patient_id)}^^^{escape(issuer)}^MR||{xpn(patient.patient_name)}||"
        f"{patient.patient_birth_date}|{patient.patient_sex[:1]}",
        f"ORC|RE|{placer}|{filler}||CM",
        _segment("OBR", {1: "1", 2: placer, 3: filler, 4: procedure_ce(order, study),
                         7: f"{study.study_date}{study.study_time.split('.')[0]}",
                         18: escape(study.accession_number), 22: when, 25: "F", 32: ndl(report.author)}),
        f"OBX|1|HD|113014^DICOM Study^DCM||{study.study_instance_uid}||||||F",
    ]
    for n, line in enumerate(text_lines(report.text), start=2):
        segments.append(f"OBX|{n}|TX|18782-3^Radiology Study observation^LN||{escape(line)}||||||F")
    return "\r".join(segments) + "\r"


def add_report(settings: Settings, study_uid: str, text: str, author: str, actor: str | None = None
               ) -> dict[str, Any]:
    """Store a final report and queue it for the RIS; one transaction."""
    check_uid(study_uid, "Study Instance UID")
    if not text.strip():
        raise ReportError("the report is empty")
    if len(text) > MAX_REPORT_CHARS:
        raise ReportError(f"the report is longer than {MAX_REPORT_CHARS} characters")
    if not author.strip():
        raise ReportError("a report needs its author (--author)")

    def work(session: Session) -> dict[str, Any]:
        row = session.execute(select(Study, Patient).join(Patient, Study.patient_fk == Patient.id)
                              .where(Study.study_instance_uid == study_uid)).first()
        if row is None:
            raise LookupError(f"no study {study_uid}")
        study, patient = row
        if study.validation_status in HIDDEN:
            raise ReportError(f"study {study_uid} is {study.validation_status}: decide on it first "
                              "(pacs quarantine)")
        order = session.get(Order, study.order_fk) if study.order_fk else None
        issuer = order.issuer_of_accession_number if order else patient.issuer_of_patient_id
        domain = report_domain(session, issuer)
        now = utcnow()
        report = Report(study_fk=study.id, status=FINAL, author=author.strip(), text=text, created_at=now)
        session.add(report)
        session.flush()
        control_id = f"PACS{uuid.uuid4().hex[:16].upper()}"
        session.add(Hl7Outbox(message_control_id=control_id, message_type="ORU^R01", report_fk=report.id,
                              issuer=domain.issuer if domain else issuer,
                              raw=oru_message(report, study, patient, order, domain, settings, control_id),
                              state=WAITING, attempts=0, next_attempt_at=now, created_at=now,
                              last_error="" if domain else "no RIS domain with a report destination yet "
                              "(pacs ris domain add ISSUER --report-host H --report-port P)"))
        study.reading_status = REPORTED
        session.add(Change(change_type="study-reported", resource_type="study", resource_uid=study_uid,
                           created_at=now))
        audit(session, "report-add", "study", study_uid, actor=actor, author=author, report_id=report.id,
              message_control_id=control_id)
        return {"report_id": report.id, "study_instance_uid": study_uid, "message_control_id": control_id,
                "destination": f"{domain.report_host}:{domain.report_port}" if domain else ""}

    return run_in_transaction(work, settings)


def list_outbox(settings: Settings, state: str | None = None) -> list[dict[str, Any]]:
    with unit_of_work(settings) as session:
        query = select(Hl7Outbox).order_by(Hl7Outbox.id)
        if state:
            query = query.where(Hl7Outbox.state == state)
        return [{"id": m.id, "message_control_id": m.message_control_id, "message_type": m.message_type,
                 "issuer": m.issuer, "state": m.state, "attempts": m.attempts,
                 "next_attempt_at": m.next_attempt_at.isoformat() if m.state == WAITING else None,
                 "destination": m.destination, "last_error": m.last_error,
                 "created_at": m.created_at.isoformat(), "sent_at": m.sent_at.isoformat() if m.sent_at else None,
                 "report_id": m.report_fk}
                for m in session.scalars(query)]


class OutboxError(ValueError):
    """The outbox message cannot be retried or cancelled (already sent)."""


def _outbox_row(session: Session, key: str) -> Hl7Outbox:
    """An outbox message by its id or its message control ID (MSH-10)."""
    query = select(Hl7Outbox).where(Hl7Outbox.message_control_id == key)
    if key.isdigit():
        query = select(Hl7Outbox).where(or_(Hl7Outbox.id == int(key), Hl7Outbox.message_control_id == key))
    row = session.scalars(query).first()
    if row is None:
        raise LookupError(f"no outbox message {key}")
    return row


def retry_outbox(settings: Settings, keys: list[str], actor: str | None = None) -> list[str]:
    """Send these messages (every waiting one when ``keys`` is empty) at the
    sender's next round instead of after their backoff; a cancelled message
    is queued again. Returns their message control IDs."""

    def work(session: Session) -> list[str]:
        if keys:
            rows = [_outbox_row(session, key) for key in keys]
        else:
            rows = list(session.scalars(select(Hl7Outbox).where(Hl7Outbox.state == WAITING)))
        now = utcnow()
        for row in rows:
            if row.state == SENT:
                raise OutboxError(f"{row.message_control_id} was delivered at {row.sent_at:%Y-%m-%d %H:%M:%S}")
            before, row.state, row.next_attempt_at = row.state, WAITING, now
            audit(session, "hl7-outbox-retry", "hl7-message", row.message_control_id, actor=actor, was=before)
        return [row.message_control_id for row in rows]

    return run_in_transaction(work, settings)


def cancel_outbox(settings: Settings, key: str, reason: str, actor: str | None = None) -> str:
    """Stop delivering a message (the RIS will never take it, or had it by
    other means); the report stays, marked not sent. Audited with why."""
    if not reason.strip():
        raise OutboxError("say why (--reason): the cancellation is audited")

    def work(session: Session) -> str:
        row = _outbox_row(session, key)
        if row.state == SENT:
            raise OutboxError(f"{row.message_control_id} was delivered at {row.sent_at:%Y-%m-%d %H:%M:%S}")
        row.state, row.lease_until = CANCELLED, None
        audit(session, "hl7-outbox-cancel", "hl7-message", row.message_control_id, actor=actor,
              reason=reason.strip(), attempts=row.attempts, last_error=row.last_error)
        return row.message_control_id

    return run_in_transaction(work, settings)


def list_reports(settings: Settings, study_uid: str) -> list[dict[str, Any]]:
    check_uid(study_uid, "Study Instance UID")
    with unit_of_work(settings) as session:
        rows = session.execute(select(Report, Hl7Outbox.state).join(Study, Report.study_fk == Study.id)
                               .join(Hl7Outbox, Hl7Outbox.report_fk == Report.id, isouter=True)
                               .where(Study.study_instance_uid == study_uid).order_by(Report.id)).all()
        return [{"report_id": r.id, "status": r.status, "author": r.author, "created_at": r.created_at.isoformat(),
                 "sent_to_ris": state == SENT,
                 "delivery": state or "", "text": r.text} for r, state in rows]
