"""Running a Celery worker for one service's queues, with optional
periodic "ticker" threads (idempotent work that needs no message)."""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Callable

from celery import Celery
from celery.exceptions import SecurityWarning

from services.settings import Settings
from services.tasks import make_celery

LOG = logging.getLogger(__name__)


def ticker(name: str, interval: float, work: Callable[[], object]) -> threading.Thread:
    """Run ``work`` every ``interval`` seconds in a daemon thread; errors are
    logged and the next tick tries again."""

    def loop() -> None:
        stop = threading.Event()
        while not stop.wait(interval):
            try:
                work()
            except Exception:  # noqa: BLE001 - a tick must never kill the ticker
                LOG.exception("%s failed", name)

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    return thread


def run_worker(settings: Settings, name: str, queues: list[str],
               register: list[Callable[[Celery], None]]) -> None:
    if settings.worker_nice:
        os.nice(settings.worker_nice)
    # Celery's multi-line warning about running as root, once per worker:
    # `pacs up` says it once; the container image runs as an unprivileged user.
    warnings.filterwarnings("ignore", category=SecurityWarning)
    app = make_celery(settings)
    for fn in register:
        fn(app)
    app.worker_main([
        "--quiet",  # no start-up banner: `pacs up` prints where each service runs
        "worker", "-Q", ",".join(queues), "-n", f"{name}@%h",
        "--pool=threads", f"--concurrency={settings.worker_concurrency}",
        f"--loglevel={settings.log_level}", "--without-gossip", "--without-mingle",
        "--without-heartbeat",
    ])
