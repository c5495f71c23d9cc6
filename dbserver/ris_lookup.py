"""Validation against an external RIS by Modality Worklist C-FIND
(PS3.4 Annex K), instead of, or beside, the HL7 order feed.

With ``PACS_RIS_MWL_AE`` set, a new study whose accession number matches no
local order is ``pending`` (:mod:`dbserver.validation`). Every
``PACS_RIS_RETRY_SECONDS`` the dbserver asks the RIS for the pending
accession numbers, over one association: the orders it returns are kept
(source ``mwl``, not served on our own worklist) and the studies validated
against them; an accession the RIS does not know makes its study
``unverified``. While the RIS cannot be reached, the studies stay pending
and are asked again on the next round.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone

from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind
from sqlalchemy import select
from sqlalchemy.orm import Session

from dbserver.models import Study
from dbserver.validation import PENDING, validate_studies
from dbserver.worklist import OrderFields, save_order
from services.db import run_in_transaction, unit_of_work
from services.settings import Settings

LOG = logging.getLogger(__name__)

_PENDING_STATUSES = (0xFF00, 0xFF01)
_TOP_KEYS = ("PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
             "StudyInstanceUID", "RequestedProcedureID", "RequestedProcedureDescription",
             "ReferringPhysicianName")
_SPS_KEYS = ("Modality", "ScheduledStationAETitle", "ScheduledStationName", "ScheduledProcedureStepStartDate",
             "ScheduledProcedureStepStartTime", "ScheduledProcedureStepID",
             "ScheduledProcedureStepDescription", "ScheduledPerformingPhysicianName")


class RisUnreachable(Exception):
    """The RIS refused or dropped the association, or answered a failure."""


def _query(accession: str) -> Dataset:
    ds = Dataset()
    ds.AccessionNumber = accession
    for keyword in _TOP_KEYS:
        setattr(ds, keyword, "")
    sps = Dataset()
    for keyword in _SPS_KEYS:
        setattr(sps, keyword, "")
    ds.ScheduledProcedureStepSequence = Sequence([sps])
    return ds


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    return "" if value is None else str(value).strip()


def _start(sps: Dataset) -> datetime | None:
    date, time = _text(sps, "ScheduledProcedureStepStartDate"), _text(sps, "ScheduledProcedureStepStartTime")
    text = (date + (time.replace(":", "").split(".")[0] + "000000")[:6]) if date else ""
    try:
        return datetime.strptime(text, "%Y%m%d%H%M%S").replace(tzinfo=timezone.utc) if text else None
    except ValueError:
        return None


def order_fields(item: Dataset, settings: Settings) -> OrderFields | None:
    """A worklist item as an order (None without accession or Patient ID)."""
    accession, patient_id = _text(item, "AccessionNumber"), _text(item, "PatientID")
    if not accession or not patient_id:
        return None
    issuer = _text(item, "IssuerOfPatientID") or settings.ris_mwl_issuer or settings.ris_mwl_ae
    sps = item.ScheduledProcedureStepSequence[0] if item.get("ScheduledProcedureStepSequence") else Dataset()
    return OrderFields(
        accession_number=accession[:16], issuer_of_accession_number=issuer, patient_id=patient_id,
        issuer_of_patient_id=issuer, patient_name=_text(item, "PatientName"),
        patient_birth_date=_text(item, "PatientBirthDate")[:8], patient_sex=_text(item, "PatientSex")[:16],
        study_instance_uid=_text(item, "StudyInstanceUID"),
        requested_procedure_id=_text(item, "RequestedProcedureID")[:16],
        requested_procedure_description=_text(item, "RequestedProcedureDescription")[:64],
        referring_physician_name=_text(item, "ReferringPhysicianName"),
        modality=_text(sps, "Modality")[:16], scheduled_station_ae_title=_text(sps, "ScheduledStationAETitle")[:16],
        scheduled_station_name=_text(sps, "ScheduledStationName")[:16], scheduled_start=_start(sps),
        scheduled_procedure_step_id=_text(sps, "ScheduledProcedureStepID")[:16],
        scheduled_procedure_step_description=_text(sps, "ScheduledProcedureStepDescription")[:64],
        scheduled_performing_physician_name=_text(sps, "ScheduledPerformingPhysicianName"),
        source="mwl")


def ask_worklist(settings: Settings, accessions: list[str]) -> dict[str, list[Dataset]]:
    """The RIS's worklist items for each accession number, over one
    association; raises :class:`RisUnreachable`."""
    ae = AE(ae_title=settings.dicom_ae_title)
    ae.add_requested_context(ModalityWorklistInformationFind)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    assoc = ae.associate(settings.ris_mwl_host, settings.ris_mwl_port, ae_title=settings.ris_mwl_ae)
    if not assoc.is_established:
        raise RisUnreachable(f"no association with {settings.ris_mwl_ae} at "
                             f"{settings.ris_mwl_host}:{settings.ris_mwl_port}")
    found: dict[str, list[Dataset]] = {}
    try:
        for accession in accessions:
            items = found.setdefault(accession, [])
            for status, identifier in assoc.send_c_find(_query(accession), ModalityWorklistInformationFind):
                if not status:
                    raise RisUnreachable(f"{settings.ris_mwl_ae} dropped the association")
                if status.Status in _PENDING_STATUSES and identifier is not None:
                    items.append(identifier)
                elif status.Status != 0x0000:
                    raise RisUnreachable(f"{settings.ris_mwl_ae} answered C-FIND status 0x{status.Status:04X}")
    finally:
        if assoc.is_established:
            assoc.release()
    return found


def resolve_pending(settings: Settings, limit: int = 200) -> dict[str, str]:
    """Ask the RIS about pending studies and validate them; returns study
    UID -> outcome (empty while the RIS cannot be reached)."""
    if not settings.ris_mwl_ae:
        return {}
    with unit_of_work(settings) as session:
        pending = session.execute(select(Study.id, Study.accession_number)
                                  .where(Study.validation_status == PENDING).order_by(Study.id).limit(limit)).all()
    if not pending:
        return {}
    accessions = sorted({acc for _, acc in pending})
    try:
        found = ask_worklist(settings, accessions)
    except RisUnreachable as exc:
        LOG.warning("RIS worklist not reachable, %d studies stay pending: %s", len(pending), exc)
        error = str(exc)
        run_in_transaction(lambda s: _note_attempt(s, [i for i, _ in pending], error), settings)
        return {}

    def work(session: Session) -> dict[str, str]:
        for items in found.values():
            for item in items:
                fields = order_fields(item, settings)
                if fields is not None:
                    save_order(session, fields)
        return validate_studies(session, {i for i, _ in pending}, settings, ask_ris=False)

    outcomes = run_in_transaction(work, settings)
    LOG.info("RIS worklist answered for %d pending studies: %s", len(outcomes), outcomes)
    return outcomes


def _note_attempt(session: Session, study_ids: list[int], error: str) -> None:
    now = datetime.now(timezone.utc).isoformat()
    for study in session.scalars(select(Study).where(Study.id.in_(study_ids), Study.validation_status == PENDING)):
        detail = json.loads(study.validation_detail or "{}")
        detail.update(last_attempt=now, last_error=error, attempts=int(detail.get("attempts", 0)) + 1)
        study.validation_detail = json.dumps(detail)
