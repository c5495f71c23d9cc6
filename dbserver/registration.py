"""Registration of received instances: patient → study → series → instance,
in one transaction per batch, idempotent.

Each item is the header the gateway read (:class:`services.dicom.Header`
as a dict) plus ``sha256``, ``size_bytes``, ``calling_ae_title`` and
``received_at`` (ISO 8601). A re-sent identical object is a no-op; a
different object under a known SOP Instance UID follows
``PACS_DUPLICATE_POLICY`` and the losing object is recorded as superseded
(it stays in the archive).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import distinct, func, select, tuple_, update
from sqlalchemy.orm import Session

from dbserver.models import (
    Change,
    DicomNode,
    Instance,
    Patient,
    PatientPriorId,
    Series,
    Study,
    SupersededObject,
    utcnow,
)
from dbserver.patients import NO_PATIENT_ID
from dbserver.validation import DEMOGRAPHICS, validate_studies
from services.db import run_in_transaction, unit_of_work
from services.settings import Settings, get_settings
from services.sqlutil import insert_ignore
from services.uids import check_uid

LOG = logging.getLogger(__name__)

KEPT_FIRST = "duplicate-kept-first"
OVERWRITTEN = "overwritten"
REJECTED = "duplicate-rejected"


def _parse_time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    try:
        parsed = datetime.fromisoformat(str(value))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    except ValueError:
        return utcnow()


def _clean(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop items that cannot be registered (bad UIDs) and exact repeats."""
    seen: set[tuple[str, str]] = set()
    out = []
    for item in items:
        try:
            for key in ("sop_instance_uid", "study_instance_uid", "series_instance_uid"):
                check_uid(item.get(key), key)
        except Exception as exc:  # noqa: BLE001
            LOG.error("unregistrable item %s: %s", item.get("sha256"), exc)
            continue
        ident = (item["sop_instance_uid"], item["sha256"])
        if ident in seen:
            continue
        seen.add(ident)
        item = dict(item)
        item["received_at"] = _parse_time(item.get("received_at"))
        item["patient_id"] = (item.get("patient_id") or "").strip()
        item["issuer_of_patient_id"] = patient_issuer(item)
        out.append(item)
    out.sort(key=lambda i: i["received_at"])
    return out


def patient_issuer(item: dict[str, Any]) -> str:
    """The issuer that, with the Patient ID, identifies a patient. Objects
    without a Patient ID are never merged with one another: each study gets
    a patient of its own, marked by a private issuer."""
    if item["patient_id"]:
        return (item.get("issuer_of_patient_id") or "").strip()
    digest = hashlib.sha1(item["study_instance_uid"].encode()).hexdigest()[:40]
    return f"{NO_PATIENT_ID}{digest}"


def register_instances(items: list[dict[str, Any]], settings: Settings | None = None) -> dict[str, int]:
    """Register a batch; returns counts of what happened."""
    settings = settings or get_settings()
    batch = _clean(items)
    if not batch:
        return {"new": 0, "existing": 0, "superseded": 0}
    return run_in_transaction(lambda session: _register(session, batch, settings), settings)


def _ids(session: Session, column, key_column, keys: set) -> dict:  # noqa: ANN001
    if not keys:
        return {}
    return dict(session.execute(select(key_column, column).where(key_column.in_(keys))).all())


def _patient_keys(session: Session, keys: set[tuple[str, str]], pk,  # noqa: ANN001
                  *order_by) -> dict[tuple[str, str], int]:  # noqa: ANN002
    """(Patient ID, issuer) -> ``pk`` for the rows of ``pk``'s table with
    those keys; the last in ``order_by`` wins."""
    table = pk.class_
    rows = session.execute(select(table.patient_id, table.issuer_of_patient_id, pk)
                           .where(tuple_(table.patient_id, table.issuer_of_patient_id).in_(keys)).order_by(*order_by))
    return {(pid, issuer): fk for pid, issuer, fk in rows}


def _default_issuers(session: Session, batch: list[dict[str, Any]], settings: Settings) -> None:
    """Images with a Patient ID and no Issuer of Patient ID (what most
    modalities send) take the issuer of the node that sent them (``pacs node
    add … --issuer``), else ``PACS_DEFAULT_ISSUER_OF_PATIENT_ID``: their
    patient is then the one of that RIS domain, prior identifiers included.
    The stored objects stay as received."""
    bare = [i for i in batch if i["patient_id"] and not i["issuer_of_patient_id"]]
    if not bare:
        return
    aes = {(i.get("calling_ae_title") or "").strip() for i in bare} - {""}
    by_node = dict(session.execute(select(DicomNode.ae_title, DicomNode.issuer_of_patient_id).where(
        DicomNode.ae_title.in_(aes), DicomNode.issuer_of_patient_id != "")).all()) if aes else {}
    default = settings.default_issuer_of_patient_id.strip()
    for i in bare:
        i["issuer_of_patient_id"] = by_node.get((i.get("calling_ae_title") or "").strip()) or default


def _patients(session: Session, batch: list[dict[str, Any]], now: datetime) -> dict[tuple[str, str], int]:
    """The patient row of each (Patient ID, issuer) of the batch. A new one
    keeps the first demographics seen; an identifier the RIS merged or
    changed (ADT^A40, A47) finds the patient that has it now."""
    keys = {(i["patient_id"], i["issuer_of_patient_id"]) for i in batch}
    found = _patient_keys(session, keys, Patient.id)
    missing = keys - found.keys()
    if missing:  # the latest merge or change of an identifier is the one that counts
        found.update(_patient_keys(session, missing, PatientPriorId.patient_fk, PatientPriorId.replaced_at,
                                   PatientPriorId.id))
    new = [i for i in batch if (i["patient_id"], i["issuer_of_patient_id"]) not in found]
    if new:
        insert_ignore(session, Patient.__table__, [
            {"patient_id": i["patient_id"], "issuer_of_patient_id": i["issuer_of_patient_id"],
             "patient_name": i.get("patient_name", ""), "patient_birth_date": i.get("patient_birth_date", ""),
             "patient_sex": i.get("patient_sex", ""), "created_at": now, "updated_at": now}
            for i in new], ["patient_id", "issuer_of_patient_id"])
        found.update(_patient_keys(session, keys - found.keys(), Patient.id))
    return found


def _register(session: Session, batch: list[dict[str, Any]], settings: Settings) -> dict[str, int]:
    now = utcnow()
    counts = {"new": 0, "existing": 0, "superseded": 0}

    _default_issuers(session, batch, settings)
    patient_ids = _patients(session, batch, now)

    study_uids = {i["study_instance_uid"] for i in batch}
    known_studies = _ids(session, Study.id, Study.study_instance_uid, study_uids)
    insert_ignore(session, Study.__table__, [
        {"study_instance_uid": i["study_instance_uid"],
         "patient_fk": patient_ids[(i["patient_id"], i["issuer_of_patient_id"])],
         "study_date": i.get("study_date", ""), "study_time": i.get("study_time", ""),
         "accession_number": i.get("accession_number", ""),
         "issuer_of_accession_number": (i.get("issuer_of_accession_number") or "").strip()[:64],
         "study_id": i.get("study_id", ""),
         "study_description": i.get("study_description", ""),
         "referring_physician_name": i.get("referring_physician_name", ""),
         "last_received_at": now, "stable_at": now, "stable": False, "created_at": now}
        for i in batch if i["study_instance_uid"] not in known_studies], ["study_instance_uid"])
    study_ids = _ids(session, Study.id, Study.study_instance_uid, study_uids)

    series_uids = {i["series_instance_uid"] for i in batch}
    known_series = _ids(session, Series.id, Series.series_instance_uid, series_uids)
    insert_ignore(session, Series.__table__, [
        {"series_instance_uid": i["series_instance_uid"], "study_fk": study_ids[i["study_instance_uid"]],
         "modality": i.get("modality", ""), "series_number": i.get("series_number"),
         "series_description": i.get("series_description", ""),
         "body_part_examined": i.get("body_part_examined", ""), "created_at": now}
        for i in batch if i["series_instance_uid"] not in known_series], ["series_instance_uid"])
    series_ids = _ids(session, Series.id, Series.series_instance_uid, series_uids)

    sop_uids = {i["sop_instance_uid"] for i in batch}
    current = {row.sop_instance_uid: row for row in session.execute(
        select(Instance.sop_instance_uid, Instance.sha256, Instance.received_at)
        .where(Instance.sop_instance_uid.in_(sop_uids))).all()}
    superseded_known = set(session.scalars(
        select(SupersededObject.sha256).where(SupersededObject.sha256.in_({i["sha256"] for i in batch}))))

    new_rows: dict[str, dict[str, Any]] = {}
    superseded: list[dict[str, Any]] = []
    overwrites: list[dict[str, Any]] = []
    touched_studies: set[int] = set()
    for item in batch:
        uid, sha = item["sop_instance_uid"], item["sha256"]
        row = _instance_row(item, series_ids[item["series_instance_uid"]])
        held = new_rows.get(uid)
        held_sha, held_time = (held["sha256"], held["received_at"]) if held else (
            (current[uid].sha256, current[uid].received_at) if uid in current else (None, None))
        if held_sha is None:
            new_rows[uid] = row
            touched_studies.add(study_ids[item["study_instance_uid"]])
            continue
        if held_sha == sha or sha in superseded_known:
            counts["existing"] += 1
            continue
        policy = settings.duplicate_policy
        if policy == "overwrite" and item["received_at"] >= held_time:
            superseded.append(_superseded(uid, held_sha, OVERWRITTEN, item))
            if held:
                new_rows[uid] = row
            else:
                overwrites.append(row)
            touched_studies.add(study_ids[item["study_instance_uid"]])
        else:
            reason = {"keep-first": KEPT_FIRST, "reject": REJECTED}.get(policy, OVERWRITTEN)
            superseded.append(_superseded(uid, sha, reason, item))
        counts["superseded"] += 1
        LOG.warning("SOP Instance %s received again with different content (%s): policy %s",
                    uid, sha[:12], policy)

    insert_ignore(session, Instance.__table__, list(new_rows.values()), ["sop_instance_uid"])
    for row in overwrites:
        session.execute(update(Instance).where(Instance.sop_instance_uid == row["sop_instance_uid"])
                        .values(**{k: v for k, v in row.items() if k != "sop_instance_uid"}))
    insert_ignore(session, SupersededObject.__table__, superseded, ["sha256"])
    counts["new"] = len(new_rows)

    changes = [{"change_type": "new-instance", "resource_type": "instance", "resource_uid": uid,
                "created_at": now} for uid in new_rows]
    changes += [{"change_type": "new-study", "resource_type": "study", "resource_uid": uid,
                 "created_at": now} for uid in study_uids - set(known_studies)]
    changes += [{"change_type": "new-series", "resource_type": "series", "resource_uid": uid,
                 "created_at": now} for uid in series_uids - set(known_series)]
    if changes:
        session.execute(Change.__table__.insert(), changes)
    new_studies = {study_ids[uid] for uid in study_uids - set(known_studies)}
    if new_studies:
        received: dict[int, dict[str, str]] = {}
        for item in batch:  # the demographics of each new study's first instance
            received.setdefault(study_ids[item["study_instance_uid"]],
                                {key: str(item.get(key) or "") for key in DEMOGRAPHICS})
        validate_studies(session, new_studies, settings, received={k: v for k, v in received.items()
                                                                   if k in new_studies})
    if touched_studies:
        refresh_aggregates(session, touched_studies,
                           stable_at=now + timedelta(seconds=settings.study_stable_seconds), now=now)
    return counts


def _instance_row(item: dict[str, Any], series_fk: int) -> dict[str, Any]:
    return {"sop_instance_uid": item["sop_instance_uid"], "series_fk": series_fk,
            "sop_class_uid": item.get("sop_class_uid", ""), "instance_number": item.get("instance_number"),
            "transfer_syntax_uid": item.get("transfer_syntax_uid", ""),
            "number_of_frames": item.get("number_of_frames"), "rows": item.get("rows"),
            "columns": item.get("columns"), "sha256": item["sha256"],
            "size_bytes": int(item.get("size_bytes", 0)),
            "calling_ae_title": (item.get("calling_ae_title") or "")[:16],
            "received_at": item["received_at"]}


def _superseded(uid: str, sha: str, reason: str, item: dict[str, Any]) -> dict[str, Any]:
    return {"sop_instance_uid": uid, "sha256": sha, "reason": reason,
            "calling_ae_title": (item.get("calling_ae_title") or "")[:16],
            "received_at": item["received_at"]}


def refresh_aggregates(session: Session, study_ids: set[int], stable_at: datetime | None = None,
                       now: datetime | None = None) -> None:
    """Recompute the counts, modalities and size of studies and their
    series; with ``stable_at``, push the studies' stable time (debounce)."""
    series_counts = session.execute(
        select(Series.id, func.count(Instance.id))
        .join(Instance, Instance.series_fk == Series.id, isouter=True)
        .where(Series.study_fk.in_(study_ids)).group_by(Series.id)).all()
    for series_id, n in series_counts:
        session.execute(update(Series).where(Series.id == series_id)
                        .values(number_of_series_related_instances=n))
    rows = session.execute(
        select(Series.study_fk, func.count(distinct(Series.id)), func.count(Instance.id),
               func.coalesce(func.sum(Instance.size_bytes), 0))
        .join(Instance, Instance.series_fk == Series.id, isouter=True)
        .where(Series.study_fk.in_(study_ids)).group_by(Series.study_fk)).all()
    modalities: dict[int, set[str]] = {}
    for study_fk, modality in session.execute(
            select(Series.study_fk, Series.modality).where(Series.study_fk.in_(study_ids))):
        if modality:
            modalities.setdefault(study_fk, set()).add(modality)
    for study_fk, n_series, n_instances, size in rows:
        values: dict[str, Any] = {
            "number_of_study_related_series": n_series,
            "number_of_study_related_instances": n_instances,
            "size_bytes": int(size),
            "modalities_in_study": "\\".join(sorted(modalities.get(study_fk, ()))),
        }
        if stable_at is not None:
            values.update(stable_at=stable_at, stable=False, last_received_at=now or utcnow())
        session.execute(update(Study).where(Study.id == study_fk).values(**values))


def mark_stable_studies(settings: Settings | None = None) -> list[str]:
    """Mark every study whose stable time has passed as stable; one change
    row each. Atomic, so several workers may run it at once."""
    settings = settings or get_settings()

    def work(session: Session) -> list[str]:
        now = utcnow()
        uids = list(session.scalars(
            update(Study).where(Study.stable.is_(False), Study.stable_at <= now)
            .values(stable=True).returning(Study.study_instance_uid)))
        if uids:
            session.execute(Change.__table__.insert(), [
                {"change_type": "stable-study", "resource_type": "study", "resource_uid": uid,
                 "created_at": now} for uid in uids])
        return uids

    uids = run_in_transaction(work, settings)
    for uid in uids:
        LOG.info("study %s is stable", uid)
    return uids


def registered(shas: list[str], settings: Settings | None = None) -> set[str]:
    """Which of these objects the index knows (as an instance or superseded)."""
    if not shas:
        return set()
    with unit_of_work(settings) as session:
        found = set(session.scalars(select(Instance.sha256).where(Instance.sha256.in_(shas))))
        found |= set(session.scalars(select(SupersededObject.sha256).where(SupersededObject.sha256.in_(shas))))
    return found

