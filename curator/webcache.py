"""The web cache: where the curator keeps what viewers read fast —
wavelet files, thumbnails, per-series metadata documents.

It sits behind the blob interface (:class:`services.storage.BlobStore`;
the filesystem under ``PACS_WEBCACHE_DIR`` by default, an S3-compatible
bucket with ``PACS_WEBCACHE_URL=s3://bucket/prefix``) and has its own size
limit, ``PACS_WEBCACHE_MAX_BYTES``: above it, the least recently used
entries are evicted down to ``PACS_WEBCACHE_LOW_WATER`` of the limit.
Everything in it can be rebuilt from the archive, so an evicted or broken
entry is only work to redo, never data lost.

Keys: ``wavelet/<SOP Instance UID>.pcw``, ``thumbnail/<SOP Instance
UID>.png``, ``series/<Series Instance UID>.json.gz`` (UIDs are checked
before they make a key).
"""

from __future__ import annotations

import gzip
import json
import logging
from collections.abc import Callable
from functools import lru_cache
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from dbserver.models import WebcacheEntry, WebcacheSeries
from services.db import run_in_transaction, unit_of_work
from services.errors import StorageError
from services.settings import Settings
from services.storage import BlobStore, open_store
from services.uids import check_uid

LOG = logging.getLogger(__name__)

QUEUED, DONE, SKIPPED, FAILED, EVICTED = "queued", "done", "skipped", "failed", "evicted"
FINAL = (DONE, SKIPPED, FAILED)
LONG_AGO = datetime(2000, 1, 1, tzinfo=timezone.utc)


def webcache_store(settings: Settings) -> BlobStore:
    """The web cache: ``PACS_WEBCACHE_URL`` (S3-compatible) if set, else the folder."""
    return _open_store(settings.webcache_location, settings.s3_endpoint_url,
                       settings.s3_region, settings.s3_access_key_id, settings.s3_secret_access_key)


@lru_cache(maxsize=4)
def _open_store(location: str, endpoint_url: str, region: str, access_key_id: str, secret: str) -> BlobStore:
    """One store (one S3 client and its connection pool) per location and process."""
    return open_store(location, "webcache", endpoint_url=endpoint_url, region=region,
                      access_key_id=access_key_id, secret_access_key=secret)


def wavelet_key(sop_uid: str) -> str:
    return f"wavelet/{check_uid(sop_uid)}.pcw"


def thumbnail_key(sop_uid: str) -> str:
    return f"thumbnail/{check_uid(sop_uid)}.png"


def series_key(series_uid: str) -> str:
    return f"series/{check_uid(series_uid)}.json.gz"


def new_entry(sop_uid: str, sha256: str, now: datetime) -> dict[str, Any]:
    """The row of an entry just asked for (``queued``)."""
    return {"sop_instance_uid": sop_uid, "sha256": sha256, "state": QUEUED, "codec_version": 0, "wavelet_key": "",
            "wavelet_size": 0, "thumbnail_key": "", "thumbnail_size": 0, "levels": 0, "level_index": "",
            "lossy": False, "lossy_psnr": 0.0, "metadata_json": "", "error": "", "attempts": 0, "queued_at": now,
            "last_access_at": now}


def _usage(session: Session) -> tuple[int, int]:
    entries = session.scalar(select(func.coalesce(func.sum(WebcacheEntry.wavelet_size + WebcacheEntry.thumbnail_size),
                                                  0)).where(WebcacheEntry.state == DONE)) or 0
    series = session.scalar(select(func.coalesce(func.sum(WebcacheSeries.size_bytes), 0))
                            .where(WebcacheSeries.state == DONE)) or 0
    return int(entries), int(series)


def usage(settings: Settings) -> dict[str, Any]:
    """Bytes held, the limit, and entries by state."""
    with unit_of_work(settings) as session:
        entries, series = _usage(session)
        states = dict(session.execute(select(WebcacheEntry.state, func.count(WebcacheEntry.id))
                                      .group_by(WebcacheEntry.state)).all())
        docs = session.scalar(select(func.count(WebcacheSeries.id)).where(WebcacheSeries.state == DONE)) or 0
    return {"bytes": entries + series, "instance_bytes": entries, "series_bytes": series,
            "limit_bytes": settings.webcache_max_bytes, "instances": {s: int(states.get(s, 0)) for s in
                                                                       (QUEUED, DONE, SKIPPED, FAILED, EVICTED)},
            "series_documents": int(docs), "path": settings.webcache_location}


def evict(settings: Settings, target_bytes: int | None = None) -> dict[str, int]:
    """Evict least recently used entries until the cache holds at most
    ``target_bytes`` (default: the low water mark, and only when above the
    limit). Returns what was evicted and freed."""
    store = webcache_store(settings)
    if target_bytes is None:
        if not settings.webcache_max_bytes:
            return {"evicted": 0, "freed_bytes": 0}
        with unit_of_work(settings) as session:
            held = sum(_usage(session))
        if held <= settings.webcache_max_bytes:
            return {"evicted": 0, "freed_bytes": 0}
        target_bytes = int(settings.webcache_max_bytes * settings.webcache_low_water)

    def work(session: Session) -> dict[str, int]:
        held = sum(_usage(session))
        evicted = freed = 0
        entries = session.execute(select(WebcacheEntry.last_access_at, WebcacheEntry.id, WebcacheEntry.wavelet_key,
                                         WebcacheEntry.thumbnail_key,
                                         WebcacheEntry.wavelet_size + WebcacheEntry.thumbnail_size)
                                  .where(WebcacheEntry.state == DONE)).all()
        docs = session.execute(select(WebcacheSeries.last_access_at, WebcacheSeries.id, WebcacheSeries.key,
                                      WebcacheSeries.size_bytes).where(WebcacheSeries.state == DONE)).all()
        candidates = sorted([(at, "entry", row_id, (k1, k2), size) for at, row_id, k1, k2, size in entries]
                            + [(at, "series", row_id, (key,), size) for at, row_id, key, size in docs])
        for _, kind, row_id, keys, size in candidates:
            if held <= target_bytes:
                break
            for key in keys:
                if key:
                    store.delete(key)
            model = WebcacheEntry if kind == "entry" else WebcacheSeries
            session.execute(update(model).where(model.id == row_id).values(state=EVICTED))
            held -= size
            freed += size
            evicted += 1
        return {"evicted": evicted, "freed_bytes": int(freed)}

    result = run_in_transaction(work, settings)
    if result["evicted"]:
        LOG.info("web cache: evicted %d entries, %d bytes", result["evicted"], result["freed_bytes"])
    return result


def verify(settings: Settings) -> dict[str, Any]:
    """Check every entry's files and every series document: present, of
    the recorded size, and whole — each wavelet file's header, level index
    and every chunk's CRC-32, each thumbnail a readable PNG, each series
    document gzip holding a JSON array. A broken entry is queued for
    rebuilding, a broken document's row dropped (the sweeper builds it
    again). Returns counts and the broken ones."""
    store = webcache_store(settings)
    with unit_of_work(settings) as session:
        rows = session.execute(select(WebcacheEntry.id, WebcacheEntry.sop_instance_uid, WebcacheEntry.wavelet_key,
                                      WebcacheEntry.wavelet_size, WebcacheEntry.thumbnail_key,
                                      WebcacheEntry.thumbnail_size).where(WebcacheEntry.state == DONE)).all()
        docs = session.execute(select(WebcacheSeries.id, WebcacheSeries.series_instance_uid, WebcacheSeries.key,
                                      WebcacheSeries.size_bytes).where(WebcacheSeries.state == DONE)).all()
    broken: list[dict[str, str]] = []
    broken_entries: list[int] = []
    for row_id, uid, wkey, wsize, tkey, tsize in rows:
        problem = _check_file(store, wkey, wsize, _check_wavelet) or _check_file(store, tkey, tsize, _check_png)
        if problem:
            broken.append({"sop_instance_uid": uid, "problem": problem})
            broken_entries.append(row_id)
    broken_docs = []
    for row_id, uid, key, size in docs:
        problem = _check_file(store, key, size, _check_series_document)
        if problem:
            broken.append({"series_instance_uid": uid, "problem": problem})
            broken_docs.append(row_id)

    def requeue(session: Session) -> set[str]:
        """Queue the broken entries and drop the broken documents' rows that
        are still done (not evicted or rebuilt while they were checked);
        returns their UIDs."""
        still: set[str] = set()
        if broken_entries:
            # queued long ago, so that the next sweep asks for them again at once
            still.update(session.scalars(
                update(WebcacheEntry).where(WebcacheEntry.id.in_(broken_entries), WebcacheEntry.state == DONE)
                .values(state=QUEUED, queued_at=LONG_AGO).returning(WebcacheEntry.sop_instance_uid)))
        if broken_docs:  # no row: the sweeper builds it again
            still.update(session.scalars(
                delete(WebcacheSeries).where(WebcacheSeries.id.in_(broken_docs), WebcacheSeries.state == DONE)
                .returning(WebcacheSeries.series_instance_uid)))
        return still

    still = run_in_transaction(requeue, settings)
    broken = [b for b in broken if (b.get("sop_instance_uid") or b.get("series_instance_uid")) in still]
    return {"checked": len(rows) + len(docs), "broken": broken}


def _check_wavelet(data: bytes) -> None:
    from curator import wavelet

    wavelet.verify(data)


def _check_png(data: bytes) -> None:
    from curator.thumbnail import read_png

    read_png(data)


def _check_series_document(data: bytes) -> None:
    if not isinstance(json.loads(gzip.decompress(data)), list):
        raise ValueError("not a JSON array")


def _check_file(store: BlobStore, key: str, size: int, check: Callable[[bytes], None]) -> str:
    """What is wrong with the file ``key`` ("" if nothing): missing, of
    another size than recorded, or refused by ``check``."""
    if not key:
        return ""
    if not store.exists(key):
        return f"{key}: missing"
    if store.size(key) != size:
        return f"{key}: {store.size(key)} bytes, {size} recorded"
    try:
        data = store.get(key)
    except StorageError:
        if not store.exists(key):  # deleted meanwhile (an eviction): missing, if the entry is still done
            return f"{key}: missing"
        raise  # a store that cannot be read stops the check: nothing is marked broken
    try:
        check(data)
    except Exception as exc:  # noqa: BLE001 - gzip, json, the PNG reader and the codec raise many kinds
        return f"{key}: {type(exc).__name__}: {exc}"
    return ""
