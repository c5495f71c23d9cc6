"""Orders and the Modality Worklist they make (PS3.4 Annex K).

:func:`save_order` is the one way an order enters or changes (the HL7 feed,
the CLI, tests); :func:`worklist_matches` answers a Modality Worklist C-FIND
identifier with the scheduled orders it matches (PS3.4 K.6.1.2: matching
keys, return keys, wildcard and range matching, universal matching on
empty values; the Issuer of Accession Number Sequence matched on its Local
Namespace Entity ID).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from dbserver.models import Order, Patient, PatientPriorId, utcnow
from services.db import first_rows, run_in_transaction, unit_of_work
from services.settings import Settings

SCHEDULED = "scheduled"
CANCELLED = "cancelled"
COMPLETED = "completed"


@dataclass
class OrderFields:
    accession_number: str
    patient_id: str
    issuer_of_patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    issuer_of_accession_number: str = ""
    study_instance_uid: str = ""
    placer_order_number: str = ""
    filler_order_number: str = ""
    requested_procedure_id: str = ""
    requested_procedure_description: str = ""
    procedure_code_value: str = ""
    procedure_coding_scheme: str = ""
    scheduled_procedure_step_id: str = ""
    scheduled_procedure_step_description: str = ""
    modality: str = ""
    scheduled_station_ae_title: str = ""
    scheduled_station_name: str = ""
    scheduled_start: datetime | None = None
    scheduled_performing_physician_name: str = ""
    referring_physician_name: str = ""
    status: str = SCHEDULED
    source: str = "hl7"  # hl7 | mwl | cli
    extra: dict[str, Any] = field(default_factory=dict)


_ORDER_COLUMNS = (
    "placer_order_number", "filler_order_number", "requested_procedure_id", "requested_procedure_description",
    "procedure_code_value", "procedure_coding_scheme",
    "scheduled_procedure_step_id", "scheduled_procedure_step_description", "modality",
    "scheduled_station_ae_title", "scheduled_station_name", "scheduled_start",
    "scheduled_performing_physician_name", "referring_physician_name", "status", "source",
)


def save_patient(session: Session, patient_id: str, issuer_of_patient_id: str, patient_name: str = "",
                 patient_birth_date: str = "", patient_sex: str = "") -> Patient:
    """Create the patient (Patient ID within its issuer), or update it with
    every demographic given (an empty value changes nothing). The HIS/RIS
    is then the master of this patient's demographics."""
    patient = session.scalar(select(Patient).where(
        Patient.patient_id == patient_id, Patient.issuer_of_patient_id == issuer_of_patient_id))
    now = utcnow()
    if patient is None:
        patient = Patient(patient_id=patient_id, issuer_of_patient_id=issuer_of_patient_id, created_at=now)
        session.add(patient)
    for attr, value in (("patient_name", patient_name), ("patient_birth_date", patient_birth_date),
                        ("patient_sex", patient_sex)):
        if value:
            setattr(patient, attr, value)
    patient.updated_at = patient.ris_updated_at = now
    session.flush()
    return patient


def save_order(session: Session, fields: OrderFields) -> Order:
    """Create or update the order with this accession number (and issuer);
    its patient is created or updated from the order's demographics."""
    if not fields.accession_number.strip():
        raise ValueError("an order needs an accession number")
    if not fields.patient_id.strip():
        raise ValueError("an order needs a patient ID")
    patient = save_patient(session, fields.patient_id, fields.issuer_of_patient_id, fields.patient_name,
                           fields.patient_birth_date, fields.patient_sex)
    now = utcnow()
    order = session.scalar(select(Order).where(
        Order.accession_number == fields.accession_number,
        Order.issuer_of_accession_number == fields.issuer_of_accession_number))
    if order is None:
        order = Order(accession_number=fields.accession_number,
                      issuer_of_accession_number=fields.issuer_of_accession_number,
                      study_instance_uid=fields.study_instance_uid or generate_uid(prefix="2.25."),
                      created_at=now)
        session.add(order)
    order.patient_fk = patient.id
    for attr in _ORDER_COLUMNS:
        setattr(order, attr, getattr(fields, attr))
    order.updated_at = now
    session.flush()
    return order


def create_order(settings: Settings, fields: OrderFields) -> str:
    """:func:`save_order` in its own transaction; returns the study UID."""
    return run_in_transaction(lambda s: save_order(s, fields).study_instance_uid, settings)


# --- matching -------------------------------------------------------------------
def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _wildcard(pattern: str, value: str, ignore_case: bool = False) -> bool:
    """PS3.4 C.2.2.2.4: '*' any run, '?' one character; '' matches all."""
    if pattern in ("", "*"):
        return True
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE if ignore_case else 0) is not None


def date_range(value: str) -> tuple[datetime | None, datetime | None] | None:
    """A DA matching key as [low, high) datetimes, either end open: a single
    date or a range (PS3.4 C.2.2.2.5)."""
    value = value.replace(".", "")
    if not value:
        return None
    low, sep, high = value.partition("-")
    if not sep:
        high = low

    def day(text: str) -> datetime | None:
        if not text:
            return None
        try:
            return datetime.strptime(text[:8], "%Y%m%d").replace(tzinfo=timezone.utc)
        except ValueError:
            raise ValueError(f"not a date: {text!r}") from None

    upper = day(high)
    return day(low), (upper + timedelta(days=1)) if upper else None


def _time_range(value: str) -> tuple[str, str] | None:
    """A TM matching key as an inclusive (HHMMSS, HHMMSS) range: a single
    value or a range, either end open (PS3.4 C.2.2.2.5); a partial time
    covers its whole hour or minute."""
    value = value.replace(":", "")
    if not value:
        return None
    low, sep, high = value.partition("-")
    if not sep:
        high = low
    low = low.split(".")[0]
    high = high.split(".")[0]
    return (low + "000000")[:6] if low else "000000", (high + "595959"[len(high):])[:6] if high else "235959"


def worklist_matches(settings: Settings, query: Dataset) -> list[Dataset]:
    """The worklist items (one per scheduled order) matching ``query``,
    holding the keys the query asked for."""
    sps_query = query.ScheduledProcedureStepSequence[0] if query.get("ScheduledProcedureStepSequence") else Dataset()
    issuer_query = query.IssuerOfAccessionNumberSequence[0] if query.get("IssuerOfAccessionNumberSequence") \
        else Dataset()
    dates = date_range(_text(sps_query, "ScheduledProcedureStepStartDate"))
    times = _time_range(_text(sps_query, "ScheduledProcedureStepStartTime"))
    with unit_of_work(settings) as session:
        stmt = (select(Order, Patient).join(Patient, Order.patient_fk == Patient.id)
                .where(Order.status == SCHEDULED, Order.source != "mwl")  # the RIS serves its own
                .order_by(Order.scheduled_start, Order.id))
        if dates is not None:
            low, high = dates
            if low is not None:
                stmt = stmt.where(Order.scheduled_start >= low)
            if high is not None:
                stmt = stmt.where(Order.scheduled_start < high)
        rows = session.execute(stmt).all()
    out = []
    for order, patient in rows:
        start = order.scheduled_start
        if times is not None and (start is None or not _time_ok(start.strftime("%H%M%S"), times)):
            continue
        if not (_wildcard(_text(query, "PatientName"), patient.patient_name, ignore_case=True)
                and _wildcard(_text(query, "PatientID"), patient.patient_id)
                and _wildcard(_text(query, "AccessionNumber"), order.accession_number)
                and _wildcard(_text(issuer_query, "LocalNamespaceEntityID"), order.issuer_of_accession_number)
                and _wildcard(_text(sps_query, "ScheduledStationAETitle"), order.scheduled_station_ae_title)
                and _wildcard(_text(sps_query, "Modality"), order.modality)
                and _wildcard(_text(sps_query, "ScheduledPerformingPhysicianName"),
                              order.scheduled_performing_physician_name, ignore_case=True)):
            continue
        out.append(_item(query, sps_query, order, patient))
    return out


def _time_ok(hhmmss: str, rng: tuple[str, str]) -> bool:
    return rng[0] <= hhmmss <= rng[1]


def _full_date(value: str) -> str:
    """A DICOM DA, or '' for a partial date (a birth year the RIS sent)."""
    return value if len(value) == 8 else ""


def _values(order: Order, patient: Patient) -> tuple[dict[str, str], dict[str, str]]:
    start = order.scheduled_start
    top = {
        "PatientName": patient.patient_name, "PatientID": patient.patient_id,
        "IssuerOfPatientID": patient.issuer_of_patient_id, "PatientBirthDate": _full_date(patient.patient_birth_date),
        "PatientSex": patient.patient_sex, "AccessionNumber": order.accession_number,
        "StudyInstanceUID": order.study_instance_uid, "RequestedProcedureID": order.requested_procedure_id,
        "RequestedProcedureDescription": order.requested_procedure_description,
        "ReferringPhysicianName": order.referring_physician_name,
    }
    sps = {
        "ScheduledStationAETitle": order.scheduled_station_ae_title,
        "ScheduledStationName": order.scheduled_station_name,
        "ScheduledProcedureStepStartDate": start.strftime("%Y%m%d") if start else "",
        "ScheduledProcedureStepStartTime": start.strftime("%H%M%S") if start else "",
        "Modality": order.modality,
        "ScheduledPerformingPhysicianName": order.scheduled_performing_physician_name,
        "ScheduledProcedureStepDescription": order.scheduled_procedure_step_description,
        "ScheduledProcedureStepID": order.scheduled_procedure_step_id,
    }
    return top, sps


def _code(order: Order, query: Dataset, keyword: str) -> Sequence:
    """The order's procedure code as a code sequence item, with the
    attributes the query's item asked for (all three when it asked none)."""
    if not order.procedure_code_value:
        return Sequence()
    asked = query.get(keyword)
    wanted = asked[0] if asked else Dataset()
    values = {"CodeValue": order.procedure_code_value,
              "CodingSchemeDesignator": order.procedure_coding_scheme or "99RIS",
              "CodeMeaning": order.requested_procedure_description[:64] or order.procedure_code_value}
    item = Dataset()
    for name, value in values.items():
        if not len(wanted) or name in wanted:
            setattr(item, name, value)
    return Sequence([item])


_CODES = ("RequestedProcedureCodeSequence", "ScheduledProtocolCodeSequence")


def _issuer(order: Order, query: Dataset) -> Sequence:
    """Issuer of Accession Number Sequence (0008,0051; PS3.3 Table 10-17, HL7v2
    Hierarchic Designator): one item whose Local Namespace Entity ID is the
    order's issuer. We keep no Universal Entity ID (or its type): zero
    length when the query's item asks for it, left out otherwise. No item
    for an order without an issuer."""
    if not order.issuer_of_accession_number:
        return Sequence()
    asked = query.get("IssuerOfAccessionNumberSequence")
    item = Dataset()
    for elem in asked[0] if asked else ():
        if elem.keyword != "LocalNamespaceEntityID" and elem.VR != "SQ":
            item.add_new(elem.tag, elem.VR, None)
    item.LocalNamespaceEntityID = order.issuer_of_accession_number
    return Sequence([item])


def _fill(target: Dataset, query: Dataset, values: dict[str, str], order: Order) -> None:
    """Every key the query asked for: our value, or zero length if we have
    none (PS3.4 K.6.1.2.2); a sequence we do not keep comes back empty."""
    for elem in query:
        if elem.keyword in ("ScheduledProcedureStepSequence", "SpecificCharacterSet"):
            continue
        if elem.VR == "SQ":
            if elem.keyword in _CODES:
                value = _code(order, query, elem.keyword)
            elif elem.keyword == "IssuerOfAccessionNumberSequence":
                value = _issuer(order, query)
            else:
                value = Sequence()
            target.add_new(elem.tag, "SQ", value)
            continue
        target.add_new(elem.tag, elem.VR, values.get(elem.keyword, "") or None)


def _item(query: Dataset, sps_query: Dataset, order: Order, patient: Patient) -> Dataset:
    top, sps = _values(order, patient)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    _fill(ds, query, top, order)
    if "ScheduledProcedureStepSequence" in query:
        item = Dataset()
        _fill(item, sps_query, sps, order)
        ds.ScheduledProcedureStepSequence = Sequence([item])
    return ds



def like_pattern(pattern: str) -> str:
    """A DICOM wildcard (``*`` any run, ``?`` one character) as a LIKE
    pattern with ``\\`` as its escape, LIKE's own ``%`` and ``_`` taken
    literally."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def order_row(o: Order, p: Patient) -> dict[str, Any]:
    return {
        "accession_number": o.accession_number, "issuer_of_accession_number": o.issuer_of_accession_number,
        "patient_id": p.patient_id, "issuer_of_patient_id": p.issuer_of_patient_id,
        "patient_name": p.patient_name, "study_instance_uid": o.study_instance_uid,
        "requested_procedure_id": o.requested_procedure_id,
        "requested_procedure_description": o.requested_procedure_description,
        "procedure_code_value": o.procedure_code_value, "procedure_coding_scheme": o.procedure_coding_scheme,
        "modality": o.modality, "scheduled_station_ae_title": o.scheduled_station_ae_title,
        # the site's wall-clock time, as the worklist serves it
        "scheduled_start": o.scheduled_start.replace(tzinfo=None).isoformat() if o.scheduled_start else None,
        "status": o.status, "source": o.source,
    }


def find_orders(settings: Settings, *, accession: str | None = None, patient_id: str | None = None,
                status: str | None = None, modality: str | None = None, station: str | None = None,
                start: datetime | None = None, end: datetime | None = None,
                limit: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """Orders with their patients, soonest first: those that match every
    filter given (``start`` <= scheduled start < ``end``), at most
    ``limit`` of them, and how many matched in all."""
    stmt = select(Order, Patient).join(Patient, Order.patient_fk == Patient.id).order_by(
        Order.scheduled_start, Order.id)
    for column, value in ((Order.accession_number, accession), (Patient.patient_id, patient_id),
                          (Order.status, status), (Order.modality, modality),
                          (Order.scheduled_station_ae_title, station)):
        if value is not None:
            stmt = stmt.where(column == value)
    if start is not None:
        stmt = stmt.where(Order.scheduled_start >= start)
    if end is not None:
        stmt = stmt.where(Order.scheduled_start < end)
    with unit_of_work(settings) as session:
        found, total = first_rows(session, stmt, limit)
        return [order_row(o, p) for o, p in found], total


def find_patients(settings: Settings, *, patient_id: str | None = None, issuer: str | None = None,
                  name: str | None = None, limit: int | None = None) -> tuple[list[dict[str, Any]], int]:
    """Patients by name, with the identifiers they no longer have (merged,
    changed): those that match every filter given (``name`` a DICOM
    wildcard, any case), at most ``limit``, and how many matched in all."""
    stmt = select(Patient).order_by(Patient.patient_name, Patient.id)
    if patient_id is not None:
        stmt = stmt.where(Patient.patient_id == patient_id)
    if issuer is not None:
        stmt = stmt.where(Patient.issuer_of_patient_id == issuer)
    if name is not None:
        stmt = stmt.where(func.lower(Patient.patient_name).like(like_pattern(name.lower()), escape="\\"))
    with unit_of_work(settings) as session:
        found, total = first_rows(session, stmt, limit)
        patients = [row[0] for row in found]
        prior: dict[int, list[dict[str, str]]] = {}
        ids = [p.id for p in patients]
        for row in session.scalars(select(PatientPriorId).where(PatientPriorId.patient_fk.in_(ids))
                                   .order_by(PatientPriorId.id)) if ids else []:
            prior.setdefault(row.patient_fk, []).append({
                "patient_id": row.patient_id, "issuer_of_patient_id": row.issuer_of_patient_id,
                "event": row.event})
        return [{"patient_id": p.patient_id, "issuer_of_patient_id": p.issuer_of_patient_id,
                 "patient_name": p.patient_name, "patient_birth_date": p.patient_birth_date,
                 "patient_sex": p.patient_sex, "from_ris": p.ris_updated_at is not None,
                 "prior_ids": prior.get(p.id, [])} for p in patients], total
