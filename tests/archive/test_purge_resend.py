"""A purged object sent again is kept, whenever the purge's deletion runs
(SQLite and the real PostgreSQL).

A purge marks the copies of a rejected study (``dbserver.purge``); the
archive deletes marked copies later (``archive.store.delete_purged``). An
identical object sent again meanwhile finds its file still in the cache:
the archive must neither let the pending deletion take it afterwards, nor
trust a file that a deletion running at that very moment removes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

import archive.server
import archive.store
from archive.store import accept_from_inbox, cache_store, delete_purged
from dbserver.models import ObjectCopy, utcnow
from services.db import run_in_transaction, unit_of_work
from services.settings import Settings, get_settings
from services.storage import object_key

DATA = os.urandom(50_000)
SHA = hashlib.sha256(DATA).hexdigest()


def _send_to_inbox(settings: Settings) -> list[list]:
    inbox = settings.archive_inbox_path
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / f"{SHA}.dcm").write_bytes(DATA)
    return [[SHA, len(DATA)]]


def _mark_for_purge(settings: Settings) -> None:
    run_in_transaction(lambda s: s.execute(update(ObjectCopy).where(ObjectCopy.sha256 == SHA)
                                           .values(purge_requested_at=utcnow())), settings)


def _copies(settings: Settings) -> list[tuple[str, object]]:
    with unit_of_work(settings) as session:
        return [tuple(r) for r in session.execute(select(ObjectCopy.tier, ObjectCopy.purge_requested_at)
                                                  .where(ObjectCopy.sha256 == SHA))]


def _in_cache(settings: Settings) -> bool:
    path = cache_store(settings).path(object_key(SHA))
    return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == SHA


def _purge_first(monkeypatch: pytest.MonkeyPatch, module: object, name: str, settings: Settings,
                 deletes: int | None = None) -> Callable:
    """Make ``module.name`` run the pending deletion before it does its own
    work (``deletes``: how many copies that deletion must remove); returns
    the function replaced."""
    real = getattr(module, name)

    def purge_first(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        deleted = delete_purged(settings)
        assert deletes is None or deleted == deletes
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, purge_first)
    return real


@pytest.fixture
def purged(make_settings: Callable[..., Settings]) -> Settings:
    """An object in the cache whose copy a purge has marked (no instance
    refers to it any more)."""
    settings = make_settings()
    assert accept_from_inbox(_send_to_inbox(settings), settings) == 1
    _mark_for_purge(settings)
    return settings


def test_the_purge_deletes_a_marked_object_nobody_sent_again(purged: Settings) -> None:
    assert delete_purged(purged) == 1
    assert not _in_cache(purged) and _copies(purged) == []


def test_an_object_sent_again_before_the_deletion_is_kept(purged: Settings) -> None:
    assert accept_from_inbox(_send_to_inbox(purged), purged) == 1
    assert delete_purged(purged) == 0, "the object is wanted again: its mark is gone"
    assert _in_cache(purged) and _copies(purged) == [("cache", None)]
    assert not (purged.archive_inbox_path / f"{SHA}.dcm").exists()


def test_a_deletion_that_runs_while_the_object_arrives_does_not_lose_it(
        purged: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # the deletion runs after the archive saw the file in its cache, before it recorded it
    _purge_first(monkeypatch, archive.store, "keep_present", purged, deletes=1)
    assert accept_from_inbox(_send_to_inbox(purged), purged) == 1
    assert _in_cache(purged), "stored afresh from the inbox"
    assert _copies(purged) == [("cache", None)]
    monkeypatch.undo()
    assert delete_purged(purged) == 0 and _in_cache(purged)


def test_a_deletion_that_runs_just_before_the_copy_is_recorded_finds_nothing_to_delete(
        purged: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    # the mark is cleared before the archive looks at its cache a second time
    _purge_first(monkeypatch, archive.store, "record_copies", purged)
    assert accept_from_inbox(_send_to_inbox(purged), purged) == 1
    assert _in_cache(purged) and _copies(purged) == [("cache", None)]


def test_over_http_too(purged: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACS_DATA_DIR", str(purged.data_dir))
    monkeypatch.setenv("PACS_DATABASE_URL", purged.database_url)
    get_settings.cache_clear()
    try:
        real = _purge_first(monkeypatch, archive.server, "keep_present", purged, deletes=1)
        with TestClient(archive.server.create_app()) as client:
            resp = client.put(f"/objects/{SHA}", content=DATA)
            assert resp.status_code == 201, "taken afresh, the cached file being gone"
            assert _in_cache(purged) and _copies(purged) == [("cache", None)]
            _mark_for_purge(purged)
            monkeypatch.setattr(archive.server, "keep_present", real)
            assert client.put(f"/objects/{SHA}", content=DATA).status_code == 200
        assert delete_purged(purged) == 0 and _in_cache(purged)
    finally:
        get_settings.cache_clear()
