"""Validation of new studies against the HIS/RIS orders (DESIGN.md, "HIS/RIS
validation").

A new study is matched to an order by its Accession Number and compared on
Patient ID, normalized name, birth date and sex:

* ``verified`` — an order matches and every compared value agrees;
* ``quarantined`` — an order matches but a value differs
  (``PACS_VALIDATION_POLICY=quarantine``, the default): the study is
  stored, hidden from clinical views, and listed for administrators;
* ``coerced`` — the same, under ``PACS_VALIDATION_POLICY=coerce``: the
  study takes the order's demographics, applied to every object that
  leaves, with the received values in the Original Attributes Sequence;
* ``unverified`` — no accession number, or no order for it;
* ``pending`` — no order here, and the external RIS
  (``PACS_RIS_MWL_AE``) is asked by Modality Worklist C-FIND; retried
  until it answers (:mod:`dbserver.ris_lookup`).

A study is never refused for its demographics.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from dbserver.models import Change, Order, Patient, Study, utcnow
from dbserver.patients import prior_ids
from services.settings import Settings

VERIFIED = "verified"
PENDING = "pending"  # the external RIS is to be asked
COERCED = "coerced"  # mismatch under the coerce policy: the order's demographics taken
QUARANTINED = "quarantined"
UNVERIFIED = "unverified"
RECONCILED = "reconciled"  # quarantined, then given its order's demographics
ACCEPTED = "accepted"  # quarantined, then accepted as received
REJECTED = "rejected"  # quarantined, then rejected: out of every clinical view
HIDDEN = (QUARANTINED, REJECTED)

_NOT_NAME = re.compile(r"[^0-9A-Z]+")


def normalize_name(name: str) -> str:
    """A person name as compared: the alphabetic group only, upper case,
    letters and digits of each component, no trailing empty components
    (``Doe^John^^`` = ``DOE^JOHN``; ``O'Brien`` = ``OBRIEN``)."""
    alphabetic = (name or "").split("=")[0].upper()
    parts = [_NOT_NAME.sub("", part) for part in alphabetic.split("^")]
    while parts and not parts[-1]:
        parts.pop()
    return "^".join(parts)


DEMOGRAPHICS = ("patient_id", "patient_name", "patient_birth_date", "patient_sex")


def demographics(patient: Patient) -> dict[str, str]:
    return {key: getattr(patient, key) or "" for key in DEMOGRAPHICS}


def differences(images: dict[str, str], order_patient: Patient,
                earlier_ids: Collection[str] = ()) -> dict[str, dict[str, str]]:
    """What the images say and what the RIS says, where they differ. An
    empty value on either side is not a difference (nothing to compare),
    nor a Patient ID the RIS patient had before (``earlier_ids``: merged
    or changed)."""
    out: dict[str, dict[str, str]] = {}
    pid = images.get("patient_id", "")
    if pid != order_patient.patient_id and pid not in earlier_ids:
        out["patient_id"] = {"images": pid, "ris": order_patient.patient_id}
    if normalize_name(images.get("patient_name", "")) != normalize_name(order_patient.patient_name):
        out["patient_name"] = {"images": images.get("patient_name", ""), "ris": order_patient.patient_name}
    for attr in ("patient_birth_date", "patient_sex"):
        ours, theirs = images.get(attr, ""), getattr(order_patient, attr)
        if ours and theirs and ours != theirs:
            out[attr] = {"images": ours, "ris": theirs}
    return out


def _order_for(session: Session, study: Study, patient: Patient) -> tuple[Order, Patient] | None:
    rows = session.execute(select(Order, Patient).join(Patient, Order.patient_fk == Patient.id)
                           .where(Order.accession_number == study.accession_number)).all()
    if not rows:
        return None
    # the same accession in several RIS domains: prefer the study's own domain
    for order, order_patient in rows:
        if order_patient.issuer_of_patient_id == patient.issuer_of_patient_id:
            return order, order_patient
    return rows[0][0], rows[0][1]


def validate_studies(session: Session, study_ids: set[int], settings: Settings, ask_ris: bool = True,
                     received: dict[int, dict[str, str]] | None = None) -> dict[str, str]:
    """Validate these (new) studies in the caller's transaction; returns
    study UID -> outcome. ``received`` holds, per study id, the
    demographics its images carry (the patient row keeps the first ones
    seen for that Patient ID); they are kept in the validation detail for a
    later round. With ``ask_ris`` and an external RIS configured, a study
    without a local order becomes ``pending`` instead of ``unverified``."""
    outcomes: dict[str, str] = {}
    now = utcnow()
    for study, patient in session.execute(select(Study, Patient).join(Patient, Study.patient_fk == Patient.id)
                                          .where(Study.id.in_(study_ids))).all():
        found = _order_for(session, study, patient) if study.accession_number else None
        images = ((received or {}).get(study.id) or json.loads(study.validation_detail or "{}").get("received")
                  or demographics(patient))
        detail: dict[str, Any] = {}
        if found is None:
            if study.accession_number and ask_ris and settings.ris_mwl_ae:
                status = PENDING
                detail = {"reason": f"asking the RIS worklist {settings.ris_mwl_ae}"}
            else:
                status = UNVERIFIED
                detail = {"reason": "no accession number" if not study.accession_number else "no order"}
        else:
            order, order_patient = found
            study.order_fk = order.id
            diff = differences(images, order_patient, prior_ids(session, order_patient))
            if not diff:
                status = VERIFIED
            elif settings.validation_policy == "coerce":
                status = COERCED
            else:
                status = QUARANTINED
            if status != QUARANTINED:  # the RIS is the master of demographics from now on (A08, A40)
                study.patient_fk = order_patient.id
            detail = {"accession_number": order.accession_number,
                      "issuer_of_accession_number": order.issuer_of_accession_number, "differences": diff}
        detail["received"] = images
        study.validation_status = status
        study.validation_detail = json.dumps(detail)
        session.add(Change(change_type=f"study-{status}", resource_type="study",
                           resource_uid=study.study_instance_uid, created_at=now))
        outcomes[study.study_instance_uid] = status
    return outcomes


def revalidate_accession(session: Session, accession: str, settings: Settings) -> dict[str, str]:
    """Validate again the studies of ``accession`` still waiting for an
    order (``unverified``, ``pending``): an order that arrives after its
    images."""
    ids = set(session.scalars(select(Study.id).where(Study.accession_number == accession,
                                                     Study.validation_status.in_((UNVERIFIED, PENDING)))))
    return validate_studies(session, ids, settings, ask_ris=False) if ids else {}


def decide(session: Session, study_uid: str, decision: str, actor: str, reason: str,
           accession: str | None = None) -> dict[str, Any]:
    """An administrator's decision on a quarantined study: ``reconcile``
    (take the demographics of the order with ``accession``), ``accept``
    (as received) or ``reject``. Audited with who and why."""
    from dbserver.queries import audit

    study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
    if study is None:
        raise LookupError(f"no study {study_uid}")
    if study.validation_status != QUARANTINED:
        raise ValueError(f"study {study_uid} is {study.validation_status}, not quarantined")
    if not reason.strip():
        raise ValueError("say why (--reason)")
    detail = json.loads(study.validation_detail or "{}")
    if decision == "reconcile":
        if not accession:
            raise ValueError("reconcile needs the accession number of the order to take")
        order_row = session.execute(select(Order, Patient).join(Patient, Order.patient_fk == Patient.id)
                                    .where(Order.accession_number == accession)).first()
        if order_row is None:
            raise LookupError(f"no order with accession number {accession}")
        order, order_patient = order_row
        study.order_fk, study.patient_fk = order.id, order_patient.id
        study.accession_number = order.accession_number
        status = RECONCILED
    elif decision == "accept":
        status = ACCEPTED
    elif decision == "reject":
        status = REJECTED
    else:
        raise ValueError(f"unknown decision {decision!r}")
    detail["decision"] = {"status": status, "by": actor, "reason": reason, "at": utcnow().isoformat()}
    study.validation_status = status
    study.validation_detail = json.dumps(detail)
    session.add(Change(change_type=f"study-{status}", resource_type="study", resource_uid=study_uid,
                       created_at=utcnow()))
    audit(session, f"quarantine-{decision}", "study", study_uid, actor=actor, reason=reason,
          accession=accession or "")
    return {"study_instance_uid": study_uid, "validation_status": status}
