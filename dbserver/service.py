"""``pacs serve dbserver``: the Celery worker of queue ``db``, the
stable-study ticker and, with an external RIS, the ticker that validates
pending studies against its worklist."""

from __future__ import annotations

from dbserver import tasks
from dbserver.registration import mark_stable_studies
from dbserver.ris_lookup import resolve_pending
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
    if settings.ris_mwl_ae:
        ticker("ris-validation", settings.ris_retry_seconds, lambda: resolve_pending(settings))
    run_worker(settings, "dbserver", [Q_DB], [tasks.register])
