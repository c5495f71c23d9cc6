"""``pacs serve curator``: the Celery worker of queue ``curator`` and the
sweeper that finds web-cache work in the database (:mod:`curator.sweeper`)."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from curator import tasks, wavelet
from curator.sweeper import sweep
from curator.webcache import webcache_store
from services.heartbeat import start_heartbeat
from services.settings import Settings
from services.tasks import Q_CURATOR
from services.worker import run_worker, ticker


LOG = logging.getLogger(__name__)


def warm_up() -> None:
    """Compile the wavelet coder now (numba; cached on disk after the first
    time) rather than on the first image."""
    start = time.monotonic()
    sample = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 4096
    wavelet.decode(wavelet.encode(sample, bits_stored=12))
    LOG.info("wavelet coder ready in %.1f s", time.monotonic() - start)


def serve(settings: Settings) -> None:
    webcache_store(settings).check()  # a bad location stops the service at start, not at the first image
    threading.Thread(target=warm_up, name="wavelet-warm-up", daemon=True).start()
    start_heartbeat(settings, "curator", {"webcache": settings.webcache_location})
    ticker("curator-sweep", settings.curator_sweep_seconds, lambda: sweep(settings))
    run_worker(settings, "curator", [Q_CURATOR], [tasks.register])
