"""``pacs serve curator``: the Celery worker of queue ``curator`` and the
sweeper that finds web-cache work in the database (:mod:`curator.sweeper`)."""

from __future__ import annotations

from curator import tasks
from curator.sweeper import sweep
from services.heartbeat import start_heartbeat
from services.settings import Settings
from services.tasks import Q_CURATOR
from services.worker import run_worker, ticker


def serve(settings: Settings) -> None:
    settings.webcache_path.mkdir(parents=True, exist_ok=True)
    start_heartbeat(settings, "curator", {"webcache": str(settings.webcache_path)})
    ticker("curator-sweep", settings.curator_sweep_seconds, lambda: sweep(settings))
    run_worker(settings, "curator", [Q_CURATOR], [tasks.register])
