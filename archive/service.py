"""``pacs serve archive``: the object endpoint (HTTP, on PACS_ARCHIVE_PORT),
the Celery worker of queue ``archive`` and the tickers that delete purged
copies and take up what was left in the inbox, in one process."""

from __future__ import annotations

import threading

import uvicorn

from archive import tasks
from archive.server import create_app
from archive.store import delete_purged, ensure_inbox, sweep_inbox
from services.heartbeat import start_heartbeat
from services.settings import Settings
from services.tasks import Q_ARCHIVE
from services.worker import run_worker, ticker


def serve(settings: Settings) -> None:
    ensure_inbox(settings)
    start_heartbeat(settings, "archive", {"url": settings.effective_archive_url})
    config = uvicorn.Config(create_app(), host=settings.archive_host, port=settings.archive_port,
                            log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    threading.Thread(target=server.run, name="archive-http", daemon=True).start()
    ticker("purged-copies", settings.sweep_interval_seconds, lambda: delete_purged(settings))
    ticker("inbox", settings.sweep_interval_seconds, lambda: sweep_inbox(settings))
    run_worker(settings, "archive", [Q_ARCHIVE], [tasks.register])
