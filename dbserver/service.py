"""``pacs serve dbserver``: the Celery worker of queue ``db`` and the
stable-study ticker."""

from __future__ import annotations

from dbserver import tasks
from dbserver.registration import mark_stable_studies
from dbserver.users import ensure_first_admin
from services.heartbeat import start_heartbeat
from services.settings import Settings
from services.tasks import Q_DB
from services.worker import run_worker, ticker


def stable_tick_interval(settings: Settings) -> float:
    return min(5.0, max(0.25, settings.study_stable_seconds / 4))


def serve(settings: Settings) -> None:
    ensure_first_admin(settings)
    start_heartbeat(settings, "dbserver")
    ticker("stable-studies", stable_tick_interval(settings), lambda: mark_stable_studies(settings))
    run_worker(settings, "dbserver", [Q_DB], [tasks.register])
