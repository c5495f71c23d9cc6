"""RIS domains: the assigning authority (issuer) of a RIS's Patient IDs and
accession numbers, the sending facility its HL7 messages carry in MSH-4,
and where its reports go (ORU^R01 over MLLP)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, delete, select, update
from sqlalchemy.orm import Session, aliased

from dbserver.models import Hl7Outbox, Order, Patient, PatientPriorId, RisDomain
from dbserver.queries import audit
from services.db import run_in_transaction, unit_of_work
from services.settings import Settings


def _public(d: RisDomain) -> dict[str, Any]:
    return {"issuer": d.issuer, "sending_facility": d.sending_facility,
            "report_to": f"{d.report_host}:{d.report_port}" if d.report_host and d.report_port else "",
            "receiving_application": d.receiving_application, "description": d.description}


class AdoptionConflict(ValueError):
    """Records of the facility would collide with the domain's own."""


def _adopt(session: Session, facility: str, issuer: str) -> dict[str, int]:
    """Move what was stored under the facility's name (its messages arrived
    before the domain existed) to the domain's issuer: patients, orders,
    prior identifiers and reports not yet sent. Refused, changing nothing,
    when a Patient ID or an accession number exists under both."""
    theirs, ours = aliased(Patient), aliased(Order)
    patients = list(session.scalars(
        select(Patient.patient_id).join(theirs, and_(theirs.patient_id == Patient.patient_id,
                                                     theirs.issuer_of_patient_id == issuer))
        .where(Patient.issuer_of_patient_id == facility).order_by(Patient.patient_id).limit(10)))
    orders = list(session.scalars(
        select(Order.accession_number).join(ours, and_(ours.accession_number == Order.accession_number,
                                                       ours.issuer_of_accession_number == issuer))
        .where(Order.issuer_of_accession_number == facility).order_by(Order.accession_number).limit(10)))
    if patients or orders:
        clash = "; ".join(part for part in (
            f"Patient IDs {', '.join(patients)}" if patients else "",
            f"accession numbers {', '.join(orders)}" if orders else "") if part)
        raise AdoptionConflict(
            f"records stored under {facility!r} cannot be adopted by domain {issuer!r}: {clash} exist under "
            f"both; merge those patients first (ADT^A40), or add the domain with --no-adopt")
    return {
        "patients": session.execute(update(Patient).where(Patient.issuer_of_patient_id == facility)
                                    .values(issuer_of_patient_id=issuer)).rowcount or 0,
        "orders": session.execute(update(Order).where(Order.issuer_of_accession_number == facility)
                                  .values(issuer_of_accession_number=issuer)).rowcount or 0,
        "prior_ids": session.execute(update(PatientPriorId).where(PatientPriorId.issuer_of_patient_id == facility)
                                     .values(issuer_of_patient_id=issuer)).rowcount or 0,
        "outbox": session.execute(update(Hl7Outbox).where(Hl7Outbox.issuer == facility, Hl7Outbox.state != "sent")
                                  .values(issuer=issuer)).rowcount or 0,
    }


def add_domain(settings: Settings, issuer: str, facility: str = "", report_host: str = "",
               report_port: int | None = None, application: str = "", description: str = "",
               adopt: bool = True) -> dict[str, Any]:
    """Add or change the domain of ``issuer``. With ``adopt`` (the default),
    records stored under the facility's name before the domain named it
    (patients, orders, prior identifiers, unsent reports) move to the
    domain, in the same transaction, audited; ``adopted`` in the result
    counts them."""
    issuer = issuer.strip()
    if not 1 <= len(issuer) <= 64 or any(c in issuer for c in "|^~\\&"):
        raise ValueError("an issuer is 1 to 64 characters, none of | ^ ~ \\ &")
    if report_port is not None and not 1 <= report_port <= 65535:
        raise ValueError("the report port must be 1 to 65535")
    if bool(report_host) != bool(report_port):
        raise ValueError("give both --report-host and --report-port, or neither")

    def work(session: Session) -> dict[str, Any]:
        if facility and session.scalar(select(RisDomain.id).where(RisDomain.sending_facility == facility,
                                                                  RisDomain.issuer != issuer)):
            raise ValueError(f"sending facility {facility!r} belongs to another domain already")
        domain = session.scalar(select(RisDomain).where(RisDomain.issuer == issuer))
        if domain is None:
            domain = RisDomain(issuer=issuer)
            session.add(domain)
        domain.sending_facility, domain.report_host, domain.report_port = facility, report_host, report_port
        domain.receiving_application, domain.description = application, description
        session.flush()
        adopted: dict[str, int] = {}
        if adopt and facility and facility != issuer:
            adopted = _adopt(session, facility, issuer)
            if any(adopted.values()):
                audit(session, "ris-domain-adopt", "domain", issuer, facility=facility, **adopted)
        audit(session, "ris-domain-add", "domain", issuer, facility=facility, report_host=report_host,
              report_port=report_port)
        return {**_public(domain), "adopted": adopted}

    return run_in_transaction(work, settings)


def list_domains(settings: Settings) -> list[dict[str, Any]]:
    with unit_of_work(settings) as session:
        return [_public(d) for d in session.scalars(select(RisDomain).order_by(RisDomain.issuer))]


def remove_domain(settings: Settings, issuer: str) -> bool:
    def work(session: Session) -> bool:
        gone = session.execute(delete(RisDomain).where(RisDomain.issuer == issuer)).rowcount
        if gone:
            audit(session, "ris-domain-remove", "domain", issuer)
        return bool(gone)

    return run_in_transaction(work, settings)


def report_domain(session: Session, issuer: str) -> RisDomain | None:
    """The domain a report for ``issuer`` goes to: that issuer's, or the
    only domain with a report destination."""
    with_destination = select(RisDomain).where(RisDomain.report_host != "", RisDomain.report_port.is_not(None))
    domain = session.scalar(with_destination.where(RisDomain.issuer == issuer)) if issuer else None
    if domain is None:
        candidates = session.scalars(with_destination.limit(2)).all()
        domain = candidates[0] if len(candidates) == 1 else None
    return domain
