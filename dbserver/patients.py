"""Patient identity changes from the HIS/RIS: merges (ADT^A40) and
identifier changes (ADT^A47).

Both run in the caller's transaction and keep the identifier that goes away
as a :class:`PatientPriorId` of the patient that remains, so it can still be
looked up. Stored objects are not rewritten: studies point at the surviving
patient row, whose demographics go out with every object that leaves
(:mod:`dbserver.corrections`).
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dbserver.models import Change, Order, Patient, PatientPriorId, Study, utcnow


# the issuer of a patient made for a study whose images carry no Patient ID:
# such studies are never merged with one another (dbserver.registration)
NO_PATIENT_ID = "~no-patient-id:"


def named_issuer(issuer: str) -> str:
    """An Issuer of Patient ID as the images or the RIS named it ("" for none)."""
    return "" if issuer.startswith(NO_PATIENT_ID) else issuer


class PatientIdentityError(ValueError):
    """The change cannot be applied: the patient it names is unknown (or
    is the survivor itself)."""


class PatientIdTakenError(PatientIdentityError):
    """The new identifier belongs to another patient already."""


def find_patient(session: Session, patient_id: str, issuer: str) -> Patient | None:
    return session.scalar(select(Patient).where(Patient.patient_id == patient_id,
                                                Patient.issuer_of_patient_id == issuer))


def find_named_patient(session: Session, patient_id: str, issuer: str) -> Patient | None:
    """The patient a merge or an identifier change names: the one of this
    domain, else one known only from images that carry this Patient ID and
    no Issuer of Patient ID (a modality that fills no issuer; the RIS
    speaks of the same patient)."""
    return find_patient(session, patient_id, issuer) or (find_patient(session, patient_id, "") if issuer else None)


def _keep_prior(session: Session, survivor: Patient, patient_id: str, issuer: str, event: str,
                control_id: str) -> None:
    session.add(PatientPriorId(patient_fk=survivor.id, patient_id=patient_id, issuer_of_patient_id=issuer,
                               event=event, message_control_id=control_id, replaced_at=utcnow()))
    session.add(Change(change_type=f"patient-{event.lower()}", resource_type="patient",
                       resource_uid=survivor.patient_id[:64], created_at=utcnow()))


def merge_patients(session: Session, survivor: Patient, prior_id: str, prior_issuer: str,
                   control_id: str = "") -> int:
    """Merge the patient ``prior_id`` into ``survivor`` (ADT^A40): its
    studies, orders and prior identifiers move over and it ceases to exist.
    Returns the number of studies moved."""
    prior = find_named_patient(session, prior_id, prior_issuer)
    if prior is None:
        raise PatientIdentityError(f"MRG-1: no patient {prior_id} ({prior_issuer}) to merge")
    if prior.id == survivor.id:
        raise PatientIdentityError(f"MRG-1: patient {prior_id} cannot be merged into itself")
    moved = session.execute(update(Study).where(Study.patient_fk == prior.id)
                            .values(patient_fk=survivor.id)).rowcount
    session.execute(update(Order).where(Order.patient_fk == prior.id).values(patient_fk=survivor.id))
    session.execute(update(PatientPriorId).where(PatientPriorId.patient_fk == prior.id)
                    .values(patient_fk=survivor.id))
    for attr in ("patient_name", "patient_birth_date", "patient_sex"):
        if not getattr(survivor, attr):
            setattr(survivor, attr, getattr(prior, attr))
    _keep_prior(session, survivor, prior.patient_id, prior.issuer_of_patient_id, "A40", control_id)
    session.flush()
    session.delete(prior)
    session.flush()
    return moved or 0


def change_patient_id(session: Session, prior_id: str, issuer: str, new_id: str, control_id: str = "",
                      new_issuer: str | None = None) -> Patient:
    """Give the patient ``prior_id`` of ``issuer`` the identifier ``new_id``
    (ADT^A47), in the assigning authority ``new_issuer`` (default: the same
    one). The new identifier must be free in that authority: one that
    exists there is a merge (ADT^A40)."""
    new_issuer = issuer if new_issuer is None else new_issuer
    patient = find_named_patient(session, prior_id, issuer)
    if patient is None:
        raise PatientIdentityError(f"MRG-1: no patient {prior_id} ({issuer}) to change")
    taken = find_patient(session, new_id, new_issuer)
    if taken is not None and taken.id != patient.id:
        raise PatientIdTakenError(f"PID-3: patient {new_id} ({new_issuer}) exists already; merging is ADT^A40")
    prior_issuer = patient.issuer_of_patient_id
    patient.patient_id, patient.issuer_of_patient_id = new_id, new_issuer
    patient.updated_at = patient.ris_updated_at = utcnow()
    _keep_prior(session, patient, prior_id, prior_issuer, "A47", control_id)
    session.flush()
    return patient


def prior_ids(session: Session, patient: Patient) -> set[str]:
    """The Patient IDs this patient had before (same or other issuer)."""
    return set(session.scalars(select(PatientPriorId.patient_id).where(PatientPriorId.patient_fk == patient.id)))
