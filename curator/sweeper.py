"""The curator's sweeper: finds web-cache work in the database and asks for
it, so that nothing depends on a message arriving (DESIGN.md: the database
is the source of truth, queue messages are hints).

Each round (every ``PACS_CURATOR_SWEEP_SECONDS``, in every curator process):

* instances with a verified archive copy and no web-cache entry get one
  (``queued``), and a task on queue ``curator`` — the claim is the insert,
  so two sweepers never ask twice for one instance;
* entries queued longer than ``PACS_CURATOR_REQUEUE_SECONDS`` (their
  message lost, their worker killed), entries made by another codec
  version, done entries made for another lossy setting
  (``PACS_CURATOR_LOSSY_PSNR``, 0 = lossless), and entries of an object
  that no longer represents its instance are queued again;
* the metadata document of every series of a stable study whose instances
  are all curated is (re)built when an instance was curated after it;
* the web cache is brought back under its size limit.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from curator.curate import CODEC_VERSION, build_series_document, lossy_setting
from curator.webcache import DONE, EVICTED, FINAL, QUEUED, evict, new_entry
from dbserver.models import Instance, ObjectCopy, Series, Study, WebcacheEntry, WebcacheSeries, utcnow
from services.db import run_in_transaction
from services.settings import Settings
from services.sqlutil import insert_ignore
from services.tasks import T_CURATE_INSTANCES, send

LOG = logging.getLogger(__name__)

BATCH = 200  # instances claimed per round
PER_TASK = 4  # instances per task message


def _claim_new(session: Session) -> list[str]:
    now = utcnow()
    archived = exists().where(ObjectCopy.sha256 == Instance.sha256, ObjectCopy.tier == "cache",
                              ObjectCopy.verified_at.is_not(None))
    has_entry = exists().where(WebcacheEntry.sop_instance_uid == Instance.sop_instance_uid)
    rows = session.execute(select(Instance.sop_instance_uid, Instance.sha256)
                           .where(archived, ~has_entry).order_by(Instance.id).limit(BATCH)).all()
    if not rows:
        return []
    return insert_ignore(session, WebcacheEntry.__table__, [new_entry(uid, sha, now) for uid, sha in rows],
                         ["sop_instance_uid"], returning="sop_instance_uid")


def _claim_again(session: Session, requeue_after: float, lossy_psnr: float) -> list[str]:
    now = utcnow()
    current_sha = (select(Instance.sha256).where(Instance.sop_instance_uid == WebcacheEntry.sop_instance_uid)
                   .scalar_subquery())
    due = select(WebcacheEntry.id).where(or_(
        and_(WebcacheEntry.state == QUEUED, WebcacheEntry.queued_at < now - timedelta(seconds=requeue_after)),
        and_(WebcacheEntry.state.in_(FINAL), WebcacheEntry.codec_version != CODEC_VERSION),
        and_(WebcacheEntry.state.in_(FINAL), WebcacheEntry.sha256 != current_sha),
        and_(WebcacheEntry.state == DONE, WebcacheEntry.lossy_psnr != lossy_psnr),
    )).limit(BATCH)
    ids = list(session.scalars(due))
    if not ids:
        return []
    return list(session.scalars(update(WebcacheEntry).where(WebcacheEntry.id.in_(ids))
                                .values(state=QUEUED, queued_at=now).returning(WebcacheEntry.sop_instance_uid)))


def series_to_document(session: Session, limit: int = 20) -> list[str]:
    """Series of stable studies whose instances are all curated and whose
    document is missing or older than one of its entries."""
    entry = select(WebcacheEntry.curated_at).join(
        Instance, Instance.sop_instance_uid == WebcacheEntry.sop_instance_uid).where(Instance.series_fk == Series.id)
    newest = entry.with_only_columns(func.max(WebcacheEntry.curated_at)).scalar_subquery()
    # an evicted entry lost its files, not its metadata: it counts as curated
    unfinished = exists().where(Instance.series_fk == Series.id).where(~exists().where(
        WebcacheEntry.sop_instance_uid == Instance.sop_instance_uid, WebcacheEntry.state.in_((*FINAL, EVICTED))))
    doc_built = (select(WebcacheSeries.built_at).where(WebcacheSeries.series_instance_uid == Series.series_instance_uid)
                 .scalar_subquery())
    query = (select(Series.series_instance_uid).join(Study, Series.study_fk == Study.id)
             .where(Study.stable.is_(True), ~unfinished, newest.is_not(None),
                    or_(doc_built.is_(None), doc_built < newest))
             .limit(limit))
    return list(session.scalars(query))


def sweep(settings: Settings) -> dict[str, int]:
    """One round; returns what it did."""
    new = run_in_transaction(_claim_new, settings)
    again = run_in_transaction(lambda s: _claim_again(s, settings.curator_requeue_seconds,
                                                      lossy_setting(settings)), settings)
    uids = new + again
    for start in range(0, len(uids), PER_TASK):
        send(T_CURATE_INSTANCES, uids[start:start + PER_TASK])
    documents = 0
    for series_uid in run_in_transaction(series_to_document, settings):
        build_series_document(settings, series_uid)
        documents += 1
    evicted = evict(settings)["evicted"]
    if uids or documents or evicted:
        LOG.info("curator sweep: %d new, %d again, %d series documents, %d evicted",
                 len(new), len(again), documents, evicted)
    return {"new": len(new), "again": len(again), "series_documents": documents, "evicted": evicted}
