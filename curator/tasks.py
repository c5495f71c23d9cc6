"""Celery tasks of the curator (queue ``curator``)."""

from __future__ import annotations

from celery import Celery

from curator.curate import curate_instance
from services.settings import get_settings
from services.tasks import T_CURATE_INSTANCES


def register(app: Celery) -> None:
    @app.task(name=T_CURATE_INSTANCES, autoretry_for=(OSError,), retry_backoff=True,
              retry_backoff_max=60, max_retries=10)
    def curate_instances(uids: list[str]) -> dict[str, str]:
        """Curate these instances; safe to run twice."""
        settings = get_settings()
        return {uid: curate_instance(settings, uid) for uid in uids}
