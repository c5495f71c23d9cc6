"""Celery tasks of the database server (queue ``db``)."""

from __future__ import annotations

from celery import Celery

from dbserver.registration import register_instances
from services.tasks import T_REGISTER_INSTANCES


def register(app: Celery) -> None:
    @app.task(name=T_REGISTER_INSTANCES, autoretry_for=(OSError,), retry_backoff=True,
              retry_backoff_max=60, max_retries=10)
    def register_instances_task(items: list[dict]) -> dict:
        """Register a batch of received instances; safe to run twice."""
        return register_instances(items)
