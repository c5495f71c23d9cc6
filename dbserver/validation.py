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
from dbserver.patients import named_issuer, prior_ids
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
        if attr == "patient_birth_date":  # the RIS may know the year (or month) only
            size = min(len(ours), len(theirs))
            ours, theirs = ours[:size], theirs[:size]
        if ours and theirs and ours != theirs:
            out[attr] = {"images": images.get(attr, ""), "ris": getattr(order_patient, attr)}
    return out


class AmbiguousAccession(ValueError):
    """An accession number that orders of several issuers (RIS domains)
    carry, with nothing to tell which one is meant."""

    def __init__(self, accession: str, issuers: Collection[str]) -> None:
        self.accession, self.issuers = accession, sorted(issuers)
        super().__init__(f"accession number {accession} is ambiguous: orders of issuers "
                         f"{', '.join(self.issuers)}; name one with --issuer")


def _order_for(session: Session, study: Study, patient: Patient) -> tuple[Order, Patient] | None:
    """The order of the study's accession number: of the study's Issuer of
    Accession Number when its images name one, else of its Issuer of
    Patient ID's domain when there is one (named by the images or given to
    them by their node or PACS_DEFAULT_ISSUER_OF_PATIENT_ID), else the only
    order with that accession number. Several candidates:
    :class:`AmbiguousAccession`, never one of them at random."""
    rows = session.execute(select(Order, Patient).join(Patient, Order.patient_fk == Patient.id)
                           .where(Order.accession_number == study.accession_number)).all()
    domain = named_issuer(patient.issuer_of_patient_id)
    if study.issuer_of_accession_number:
        rows = [r for r in rows if r[0].issuer_of_accession_number == study.issuer_of_accession_number]
    elif domain:
        rows = [r for r in rows if domain in (r[0].issuer_of_accession_number, r[1].issuer_of_patient_id)]
    if len(rows) > 1:
        raise AmbiguousAccession(study.accession_number, {order.issuer_of_accession_number for order, _ in rows})
    return (rows[0][0], rows[0][1]) if rows else None


def _outcome(session: Session, study: Study, patient: Patient, images: dict[str, str], settings: Settings,
             ask_ris: bool) -> tuple[str, dict[str, Any]]:
    """The validation status of one study and its detail; links the study
    to its order (and, unless quarantined, to the order's patient)."""
    try:
        found = _order_for(session, study, patient) if study.accession_number else None
    except AmbiguousAccession as exc:  # an administrator decides (reconcile --issuer)
        return QUARANTINED, {
            "accession_number": study.accession_number, "ambiguous_issuers": exc.issuers, "differences": {},
            "reason": f"accession number {study.accession_number} is ambiguous: orders of issuers "
                      f"{', '.join(exc.issuers)} match and nothing in the images tells which; decide with "
                      f"pacs quarantine reconcile UID --accession {study.accession_number} --issuer ISSUER"}
    if found is None:
        if study.accession_number and ask_ris and settings.ris_mwl_ae:
            return PENDING, {"reason": f"asking the RIS worklist {settings.ris_mwl_ae}"}
        return UNVERIFIED, {"reason": "no accession number" if not study.accession_number else "no order"}
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
    return status, {"accession_number": order.accession_number,
                    "issuer_of_accession_number": order.issuer_of_accession_number, "differences": diff}


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
        images = ((received or {}).get(study.id) or json.loads(study.validation_detail or "{}").get("received")
                  or demographics(patient))
        status, detail = _outcome(session, study, patient, images, settings, ask_ris)
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
           accession: str | None = None, issuer: str | None = None) -> dict[str, Any]:
    """An administrator's decision on a quarantined study: ``reconcile``
    (take the demographics of the order with ``accession``, of ``issuer``
    when several domains have that accession number), ``accept`` (as
    received) or ``reject``. Audited with who and why; returns the study's
    new state."""
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
        order, order_patient = order_for_accession(session, accession, issuer)
        study.order_fk, study.patient_fk = order.id, order_patient.id
        study.accession_number = order.accession_number
        detail.update(accession_number=order.accession_number,
                      issuer_of_accession_number=order.issuer_of_accession_number)
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
          accession=accession or "", issuer=issuer or "")
    return {"study_instance_uid": study_uid, "validation_status": status,
            "accession_number": study.accession_number,
            "issuer_of_accession_number": detail.get("issuer_of_accession_number", ""),
            "decision": detail["decision"]}


def order_for_accession(session: Session, accession: str | None, issuer: str | None) -> tuple[Order, Patient]:
    """The order an administrator names: ``accession``, of ``issuer`` when
    given. An accession number that orders of several issuers carry, with no
    issuer named, is refused (:class:`AmbiguousAccession`), never guessed."""
    if not accession:
        raise ValueError("reconcile needs the accession number of the order to take (--accession)")
    query = select(Order, Patient).join(Patient, Order.patient_fk == Patient.id).where(
        Order.accession_number == accession)
    if issuer:
        query = query.where(Order.issuer_of_accession_number == issuer)
    rows = session.execute(query).all()
    if not rows:
        raise LookupError(f"no order with accession number {accession}" + (f" of issuer {issuer}" if issuer else ""))
    if len(rows) > 1:
        raise AmbiguousAccession(accession, {order.issuer_of_accession_number for order, _ in rows})
    return rows[0][0], rows[0][1]


def record_decision(settings: Settings, study_uid: str, decision: str, actor: str, reason: str,
                    accession: str | None = None, issuer: str | None = None) -> dict[str, Any]:
    """:func:`decide` in a transaction of its own; a decision that fails
    (unknown study or order, a study not quarantined, no reason…) changes
    nothing and is audited with outcome ``failure``, then raised."""
    from dbserver.queries import audit_now
    from services.db import run_in_transaction

    try:
        return run_in_transaction(lambda s: decide(s, study_uid, decision, actor, reason, accession, issuer),
                                  settings)
    except (LookupError, ValueError) as exc:
        audit_now(settings, f"quarantine-{decision}", "study", study_uid, actor=actor, outcome="failure",
                  reason=reason, accession=accession or "", issuer=issuer or "", error=str(exc).strip("'\""))
        raise
