"""Purging a rejected study: the one way a stored study is deleted.

:func:`purge_study` removes the study's index rows (series, instances, and
the superseded objects of its instances) in one transaction, audited with
who and why, and marks every copy of its objects for deletion
(``object_copies.purge_requested_at``). The archive deletes marked copies
from its tiers (:func:`archive.store.delete_purged`); a marked object that
is registered again before then (sent anew) is kept.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from dbserver.models import Change, Instance, ObjectCopy, Series, Study, SupersededObject, utcnow
from dbserver.queries import audit
from dbserver.validation import REJECTED
from services.uids import check_uid


def purge_study(session: Session, study_uid: str, actor: str, reason: str) -> dict[str, Any]:
    check_uid(study_uid, "Study Instance UID")
    study = session.scalar(select(Study).where(Study.study_instance_uid == study_uid))
    if study is None:
        raise LookupError(f"no study {study_uid}")
    if study.validation_status != REJECTED:
        raise ValueError(f"study {study_uid} is {study.validation_status}: only a rejected study can be purged "
                         "(pacs quarantine reject first)")
    if not reason.strip():
        raise ValueError("say why (--reason)")
    series_ids = list(session.scalars(select(Series.id).where(Series.study_fk == study.id)))
    instances = session.execute(select(Instance.sop_instance_uid, Instance.sha256)
                                .where(Instance.series_fk.in_(series_ids))).all()
    sop_uids = [uid for uid, _ in instances]
    shas = {sha for _, sha in instances}
    for start in range(0, len(sop_uids), 500):
        chunk = sop_uids[start:start + 500]
        shas |= set(session.scalars(select(SupersededObject.sha256)
                                    .where(SupersededObject.sop_instance_uid.in_(chunk))))
        session.execute(delete(SupersededObject).where(SupersededObject.sop_instance_uid.in_(chunk)))
    now = utcnow()
    ordered = sorted(shas)
    for start in range(0, len(ordered), 500):
        session.execute(update(ObjectCopy).where(ObjectCopy.sha256.in_(ordered[start:start + 500]))
                        .values(purge_requested_at=now))
    session.execute(delete(Instance).where(Instance.series_fk.in_(series_ids)))
    session.execute(delete(Series).where(Series.study_fk == study.id))
    session.delete(study)
    session.add(Change(change_type="study-purged", resource_type="study", resource_uid=study_uid, created_at=now))
    audit(session, "quarantine-purge", "study", study_uid, actor=actor, reason=reason, instances=len(sop_uids),
          objects=len(shas))
    return {"study_instance_uid": study_uid, "instances": len(sop_uids), "objects": len(shas)}
