"""What is left in the archive's inbox is taken up: an object linked in
whose announcement was lost is taken into the cache (re-hashed), one the
cache holds already is only dropped, a corrupt one is dropped, a crashed
upload's temporary file deleted; files still in flight are left alone."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable

from sqlalchemy import select

from archive.store import cache_store, sweep_inbox
from dbserver.models import ObjectCopy
from services.db import unit_of_work
from services.settings import Settings
from services.storage import object_key


def _object(settings: Settings, data: bytes, name: str | None = None) -> str:
    sha = hashlib.sha256(data).hexdigest()
    inbox = settings.archive_inbox_path
    inbox.mkdir(parents=True, exist_ok=True)
    (inbox / (name or f"{sha}.dcm")).write_bytes(data)
    return sha


def _copies(settings: Settings) -> set[str]:
    with unit_of_work(settings) as session:
        return set(session.scalars(select(ObjectCopy.sha256)))


def test_the_inbox_sweep_takes_up_what_was_left(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    lost = _object(settings, os.urandom(20_000))
    corrupt = hashlib.sha256(b"what the name says").hexdigest()
    _object(settings, b"something else", f"{corrupt}.dcm")
    upload = settings.archive_inbox_path / f".http.{lost}.123.456.tmp"
    upload.write_bytes(b"half an upload")
    other = settings.archive_inbox_path / "README"
    other.write_text("not ours")

    assert sweep_inbox(settings) == {"taken": 0, "deleted": 0}, "files in flight are left alone"
    assert len(list(settings.archive_inbox_path.iterdir())) == 4

    later = time.time() + 7200
    assert sweep_inbox(settings, now=later) == {"taken": 1, "deleted": 1}
    store = cache_store(settings)
    assert hashlib.sha256(store.path(object_key(lost)).read_bytes()).hexdigest() == lost
    assert _copies(settings) == {lost}, "the object taken is recorded; the corrupt one is not"
    assert sorted(p.name for p in settings.archive_inbox_path.iterdir()) == ["README"]

    # the object linked in again, its announcement lost again: the cache has it, the link is dropped
    _object(settings, store.path(object_key(lost)).read_bytes())
    assert sweep_inbox(settings, now=time.time() + 7200) == {"taken": 1, "deleted": 0}
    assert sorted(p.name for p in settings.archive_inbox_path.iterdir()) == ["README"]
    assert _copies(settings) == {lost}
