"""The archive's tiers and the copies it records.

Every object taken is verified against its SHA-256 before its copy row is
written (PS3.4 Annex B storage semantics: what we acknowledged is what we
keep). Recording is idempotent: a resent object is a no-op.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from sqlalchemy import delete, select, update

from dbserver.models import Instance, ObjectCopy, SupersededObject, utcnow
from services.db import run_in_transaction
from services.settings import Settings, get_settings
from services.sqlutil import upsert
from services.storage import FileSystemStore, object_key

LOG = logging.getLogger(__name__)
TIER_CACHE = "cache"
_INBOX_OBJECT = re.compile(r"^([0-9a-f]{64})\.dcm$")


def cache_store(settings: Settings | None = None) -> FileSystemStore:
    settings = settings or get_settings()
    return FileSystemStore(settings.cache_path, TIER_CACHE)


def ensure_inbox(settings: Settings | None = None) -> Path:
    settings = settings or get_settings()
    settings.archive_inbox_path.mkdir(parents=True, exist_ok=True)
    return settings.archive_inbox_path


def record_copies(rows: list[tuple[str, str, int]], tier: str = TIER_CACHE,
                  settings: Settings | None = None) -> None:
    """Record verified copies: (sha256, locator, size) each. An object
    taken is wanted: a purge mark on its copy is cleared."""
    if not rows:
        return
    now = utcnow()
    values = [{"sha256": sha, "tier": tier, "locator": loc, "size_bytes": size,
               "verified_at": now, "created_at": now, "purge_requested_at": None} for sha, loc, size in rows]

    def work(session):  # noqa: ANN001, ANN202
        upsert(session, ObjectCopy.__table__, values, ["sha256", "tier"],
               ["locator", "size_bytes", "verified_at", "purge_requested_at"])

    run_in_transaction(work, settings)


def present_size(store: FileSystemStore, key: str) -> int | None:
    """The size of the object at ``key`` in the cache, None if it is not there."""
    try:
        return store.size(key)
    except FileNotFoundError:
        return None


def keep_present(store: FileSystemStore, rows: list[tuple[str, str, int]],
                 settings: Settings | None = None) -> set[str]:
    """Record objects sent again that the cache holds already: (sha256,
    locator, size) each. Returns the SHA-256 of those kept.

    A purge may have marked them (:func:`delete_purged`). The mark is
    cleared first, so no later purge deletes them; an object a purge
    deleted before that is not there any more when looked at next, and the
    caller stores it afresh."""
    if not rows:
        return set()
    shas = [sha for sha, _, _ in rows]

    def unmark(session) -> None:  # noqa: ANN001
        session.execute(update(ObjectCopy).where(ObjectCopy.sha256.in_(shas), ObjectCopy.tier == TIER_CACHE)
                        .values(purge_requested_at=None))

    run_in_transaction(unmark, settings)
    kept = [(sha, key, size) for sha, key, size in rows if present_size(store, key) == size]
    record_copies(kept, settings=settings)
    return {sha for sha, _, _ in kept}


def accept_from_inbox(announced: list[list], settings: Settings | None = None) -> int:
    """Take announced inbox files (``[sha256, size, inode]`` each) into the
    cache tier, verified, and record their copies. Returns how many were taken.

    A file that is the announced inode, of the announced size, is the one
    the sender hashed as it wrote it (a hard link copies nothing): it is
    taken as verified. Any other is re-hashed.

    An object already in the cache is only recorded (:func:`keep_present`);
    a file whose content does not match its name is dropped from the inbox
    (the sender keeps its own and resends).
    """
    settings = settings or get_settings()
    store = cache_store(settings)
    inbox = settings.archive_inbox_path
    taken: list[tuple[str, str, int]] = []
    same_inode: list[tuple[str, Path, str]] = []
    to_hash: list[tuple[str, Path, str]] = []
    sizes: dict[str, int] = {}
    present = [(sha, object_key(sha), size) for sha, size, *_ in announced
               if present_size(store, object_key(sha)) == size]
    kept = keep_present(store, present, settings)
    for sha, size, *inode in announced:
        key = object_key(sha)
        src = inbox / f"{sha}.dcm"
        if sha in kept:
            src.unlink(missing_ok=True)
            continue
        try:
            st = os.stat(src)
        except FileNotFoundError:
            continue  # the sender will announce it again
        sizes[key] = size
        if inode and st.st_ino == inode[0] and st.st_size == size:
            same_inode.append((key, src, sha))
        else:
            to_hash.append((key, src, sha))
    errors = store.put_files(same_inode, rehash=False)
    errors.update(store.put_files(to_hash))
    for key, src, sha in same_inode + to_hash:
        if key in errors:
            LOG.error("inbox object refused: %s", errors[key])
            src.unlink(missing_ok=True)
        else:
            taken.append((sha, key, sizes[key]))
    record_copies(taken, settings=settings)
    return len(taken) + len(kept)


def sweep_inbox(settings: Settings | None = None, now: float | None = None) -> dict[str, int]:
    """Take up what was left in the inbox: an object linked in whose
    announcement never came (the broker was down, and the sender's spool
    file was confirmed by an earlier copy, so nothing resends it) is taken
    like an announced one, re-hashed (or only dropped if the cache holds it
    already); an HTTP upload's temporary file left by a crash is deleted.
    Only files whose inode changed ``PACS_ARCHIVE_INBOX_STALE_SECONDS`` ago
    or more (a hard link counts as a change) are touched, so work in flight
    is left alone; taking one twice is harmless (an object the cache holds
    is only recorded).
    Returns what was taken and deleted."""
    settings = settings or get_settings()
    inbox = settings.archive_inbox_path
    limit = (time.time() if now is None else now) - settings.archive_inbox_stale_seconds
    stale: list[list] = []
    deleted = 0
    try:
        entries = list(os.scandir(inbox))
    except FileNotFoundError:
        return {"taken": 0, "deleted": 0}
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
            if st.st_ctime > limit or not entry.is_file(follow_symlinks=False):
                continue
            match = _INBOX_OBJECT.match(entry.name)
            if match:
                stale.append([match.group(1), st.st_size])
            elif entry.name.startswith(".http.") and entry.name.endswith(".tmp"):
                os.unlink(entry.path)
                deleted += 1
        except FileNotFoundError:
            continue  # taken meanwhile by its own task
    # one batch, as if announced together (a file gone meanwhile is skipped there)
    taken = accept_from_inbox(stale, settings) if stale else 0
    if taken or deleted:
        LOG.warning("archive inbox: %d unannounced objects taken, %d stale uploads deleted", taken, deleted)
    return {"taken": taken, "deleted": deleted}


def delete_purged(settings: Settings | None = None, limit: int = 500) -> int:
    """Delete the copies a purge marked (:mod:`dbserver.purge`) from this
    archive's tiers, and their rows; a marked object that is registered
    again meanwhile is kept. Returns how many copies were deleted."""
    settings = settings or get_settings()
    store = cache_store(settings)

    def work(session) -> int:  # noqa: ANN001
        marked = session.execute(select(ObjectCopy.id, ObjectCopy.sha256, ObjectCopy.tier, ObjectCopy.locator)
                                 .where(ObjectCopy.purge_requested_at.is_not(None)).limit(limit)
                                 .with_for_update()).all()
        if not marked:
            return 0
        shas = {sha for _, sha, _, _ in marked}
        wanted = set(session.scalars(select(Instance.sha256).where(Instance.sha256.in_(shas))))
        wanted |= set(session.scalars(select(SupersededObject.sha256).where(SupersededObject.sha256.in_(shas))))
        if wanted:
            session.execute(update(ObjectCopy).where(ObjectCopy.sha256.in_(wanted))
                            .values(purge_requested_at=None))
        # this archive deletes from its cache tier; a copy on another tier waits for its owner
        gone = [(row_id, tier, locator) for row_id, sha, tier, locator in marked
                if sha not in wanted and tier == TIER_CACHE]
        for _, _, locator in gone:
            store.delete(locator)
        session.execute(delete(ObjectCopy).where(ObjectCopy.id.in_([row_id for row_id, _, _ in gone])))
        return len(gone)

    deleted = run_in_transaction(work, settings)
    if deleted:
        LOG.info("deleted %d purged object copies", deleted)
    return deleted
