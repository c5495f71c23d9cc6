"""Celery tasks of the archive (queue ``archive``)."""

from __future__ import annotations

from celery import Celery

from archive.store import accept_from_inbox
from services.tasks import T_ARCHIVE_ACCEPT


def register(app: Celery) -> None:
    @app.task(name=T_ARCHIVE_ACCEPT, autoretry_for=(OSError,), retry_backoff=True,
              retry_backoff_max=60, max_retries=10)
    def accept_objects(announced: list[list]) -> int:
        """Take objects linked into the inbox; safe to run twice."""
        return accept_from_inbox(announced)
