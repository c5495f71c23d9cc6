"""Read side of the index, shared by the CLI and (later) the API: studies,
their series and instances with every copy, DICOM nodes, the audit log."""

from __future__ import annotations

import getpass
import json
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from dbserver.models import (
    AuditEvent,
    DicomNode,
    Instance,
    ObjectCopy,
    Patient,
    Series,
    Study,
    utcnow,
)
from dbserver.patients import NO_PATIENT_ID
from dbserver.validation import ACCEPTED, DEMOGRAPHICS, HIDDEN, QUARANTINED, RECONCILED, REJECTED
from services.db import run_in_transaction, unit_of_work
from services.settings import Settings
from services.uids import check_uid


def audit(session: Session, action: str, resource_type: str = "", resource_uid: str = "",
          actor: str | None = None, outcome: str = "success", **detail: Any) -> None:
    session.add(AuditEvent(at=utcnow(), actor=actor or f"cli:{getpass.getuser()}", action=action,
                           resource_type=resource_type, resource_uid=resource_uid, outcome=outcome,
                           detail=json.dumps(detail, default=str)))


def audit_now(settings: Settings, action: str, resource_type: str = "", resource_uid: str = "",
              actor: str | None = None, outcome: str = "success", **detail: Any) -> None:
    """:func:`audit` in a transaction of its own: an attempt that failed
    (and changed nothing) is recorded all the same."""
    run_in_transaction(lambda s: audit(s, action, resource_type, resource_uid[:64], actor=actor, outcome=outcome,
                                       **detail), settings)


def validation_status(settings: Settings, study_uid: str) -> str | None:
    """A study's validation status; None for an unknown study."""
    check_uid(study_uid, "Study Instance UID")
    with unit_of_work(settings) as session:
        return session.scalar(select(Study.validation_status).where(Study.study_instance_uid == study_uid))


def _study_dict(study: Study, patient: Patient) -> dict[str, Any]:
    return {
        "study_instance_uid": study.study_instance_uid,
        "patient_id": patient.patient_id,
        "issuer_of_patient_id": "" if patient.issuer_of_patient_id.startswith(NO_PATIENT_ID)
        else patient.issuer_of_patient_id,
        "patient_name": patient.patient_name,
        "patient_birth_date": patient.patient_birth_date,
        "patient_sex": patient.patient_sex,
        "patient_from_ris": patient.ris_updated_at is not None,
        "accession_number": study.accession_number,
        "issuer_of_accession_number": study.issuer_of_accession_number,
        "study_date": study.study_date,
        "study_time": study.study_time,
        "study_description": study.study_description,
        "modalities": [m for m in study.modalities_in_study.split("\\") if m],
        "num_series": study.number_of_study_related_series,
        "num_instances": study.number_of_study_related_instances,
        "size_bytes": study.size_bytes,
        "stable": study.stable,
        "validation_status": study.validation_status,
        "reading_status": study.reading_status,
        "last_received_at": study.last_received_at.isoformat(),
    }


QUARANTINE_STATES = {QUARANTINED: (QUARANTINED,), REJECTED: (REJECTED,), ACCEPTED: (ACCEPTED,),
                     RECONCILED: (RECONCILED,), "all": (QUARANTINED, REJECTED, ACCEPTED, RECONCILED)}


def list_studies(settings: Settings, actor: str | None = None, limit: int | None = None,
                 quarantined: bool = False, state: str = QUARANTINED) -> list[dict[str, Any]]:
    """The clinical list (quarantined and rejected studies hidden), or with
    ``quarantined`` the studies of the quarantine in ``state``
    (:data:`QUARANTINE_STATES`), with why; their patient fields are what
    each study's own images carry (the patient row keeps the first
    demographics seen for its Patient ID)."""
    if quarantined and state not in QUARANTINE_STATES:
        raise ValueError(f"unknown state {state!r}; one of: {', '.join(QUARANTINE_STATES)}")

    def work(session: Session) -> list[dict[str, Any]]:
        query = select(Study, Patient).join(Patient, Study.patient_fk == Patient.id).order_by(
            Study.last_received_at.desc())
        if quarantined:
            query = query.where(Study.validation_status.in_(QUARANTINE_STATES[state]))
        else:
            query = query.where(Study.validation_status.not_in(HIDDEN))
        if limit:
            query = query.limit(limit)
        rows = []
        for study, patient in session.execute(query):
            row = _study_dict(study, patient)
            if quarantined:
                row["validation_detail"] = json.loads(study.validation_detail or "{}")
                row.update({k: v for k, v in row["validation_detail"].get("received", {}).items()
                            if k in DEMOGRAPHICS})
            rows.append(row)
        audit(session, "quarantine-list" if quarantined else "study-list", "study", actor=actor, count=len(rows))
        return rows

    return run_in_transaction(work, settings)


def show_study(settings: Settings, study_uid: str, actor: str | None = None) -> dict[str, Any] | None:
    check_uid(study_uid, "Study Instance UID")

    def work(session: Session) -> dict[str, Any] | None:
        row = session.execute(select(Study, Patient).join(Patient, Study.patient_fk == Patient.id)
                              .where(Study.study_instance_uid == study_uid)).first()
        if row is None:
            return None
        study, patient = row
        out = _study_dict(study, patient)
        out["validation_detail"] = json.loads(study.validation_detail or "{}")
        series_rows = session.scalars(select(Series).where(Series.study_fk == study.id)
                                      .order_by(Series.series_number, Series.id)).all()
        instances = session.scalars(select(Instance).where(Instance.series_fk.in_([s.id for s in series_rows]))
                                    .order_by(Instance.instance_number, Instance.id)).all()
        shas = [i.sha256 for i in instances]
        copies: dict[str, list[dict[str, Any]]] = {}
        for start in range(0, len(shas), 500):
            for c in session.scalars(select(ObjectCopy).where(ObjectCopy.sha256.in_(shas[start:start + 500]))):
                copies.setdefault(c.sha256, []).append({
                    "tier": c.tier, "locator": c.locator, "sha256": c.sha256, "size_bytes": c.size_bytes,
                    "verified_at": c.verified_at.isoformat() if c.verified_at else None})
        by_series: dict[int, list[dict[str, Any]]] = {}
        for i in instances:
            by_series.setdefault(i.series_fk, []).append({
                "sop_instance_uid": i.sop_instance_uid, "sop_class_uid": i.sop_class_uid,
                "instance_number": i.instance_number, "transfer_syntax_uid": i.transfer_syntax_uid,
                "sha256": i.sha256, "size_bytes": i.size_bytes, "calling_ae_title": i.calling_ae_title,
                "received_at": i.received_at.isoformat(), "copies": copies.get(i.sha256, [])})
        out["series"] = [{
            "series_instance_uid": s.series_instance_uid, "modality": s.modality,
            "series_number": s.series_number, "series_description": s.series_description,
            "num_instances": s.number_of_series_related_instances,
            "instances": by_series.get(s.id, [])} for s in series_rows]
        audit(session, "study-show", "study", study_uid, actor=actor)
        return out

    return run_in_transaction(work, settings)


def counts(settings: Settings) -> dict[str, int]:
    with unit_of_work(settings) as session:
        return {
            "patients": session.scalar(select(func.count(Patient.id))) or 0,
            "studies": session.scalar(select(func.count(Study.id))) or 0,
            "instances": session.scalar(select(func.count(Instance.id))) or 0,
            "archived_objects": session.scalar(select(func.count(ObjectCopy.id)).where(
                ObjectCopy.tier == "cache", ObjectCopy.verified_at.is_not(None))) or 0,
            "stable_studies": session.scalar(select(func.count(Study.id)).where(Study.stable.is_(True))) or 0,
        }


# --- DICOM nodes -------------------------------------------------------------
ROLES = {"store", "query", "move", "get", "worklist", "commit", "destination"}


def add_node(settings: Settings, ae_title: str, host: str, port: int, roles: list[str],
             description: str = "", issuer: str = "") -> dict[str, Any]:
    """Add a node; ``issuer`` is the Issuer of Patient ID (a RIS domain) of
    the images it sends without one."""
    bad = set(roles) - ROLES
    if bad:
        raise ValueError(f"unknown role(s) {', '.join(sorted(bad))}; known: {', '.join(sorted(ROLES))}")
    if not 1 <= len(ae_title.strip()) <= 16 or "\\" in ae_title:
        raise ValueError("an AE title is 1 to 16 characters, no backslash")
    if not 1 <= port <= 65535:
        raise ValueError("port must be 1 to 65535")
    issuer = issuer.strip()
    if len(issuer) > 64 or any(c in issuer for c in "|^~\\&"):
        raise ValueError("an issuer is at most 64 characters, none of | ^ ~ \\ &")

    def work(session: Session) -> dict[str, Any]:
        if session.scalar(select(DicomNode.id).where(DicomNode.ae_title == ae_title.strip())):
            raise ValueError(f"a node with AE title {ae_title.strip()!r} exists already")
        node = DicomNode(ae_title=ae_title.strip(), host=host, port=port, roles=",".join(sorted(set(roles))),
                         description=description, issuer_of_patient_id=issuer)
        session.add(node)
        audit(session, "node-add", "node", ae_title.strip(), host=host, port=port, issuer=issuer)
        return _node_row(node)

    return run_in_transaction(work, settings)


def _node_row(n: DicomNode) -> dict[str, Any]:
    return {"ae_title": n.ae_title, "host": n.host, "port": n.port,
            "roles": [r for r in n.roles.split(",") if r], "description": n.description,
            "issuer_of_patient_id": n.issuer_of_patient_id}


def list_nodes(settings: Settings) -> list[dict[str, Any]]:
    with unit_of_work(settings) as session:
        return [_node_row(n) for n in session.scalars(select(DicomNode).order_by(DicomNode.ae_title))]


def remove_node(settings: Settings, ae_title: str) -> bool:
    def work(session: Session) -> bool:
        gone = session.execute(delete(DicomNode).where(DicomNode.ae_title == ae_title.strip())).rowcount
        if gone:
            audit(session, "node-remove", "node", ae_title.strip())
        return bool(gone)

    return run_in_transaction(work, settings)
