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


def _warm_up_samples() -> list[tuple[np.ndarray, dict]]:
    """Small images that take every compiled path of the coder: a signed
    16-bit CT-like image with padding (value tables, wide bands), a 12-bit
    synthetic pattern (mantissa mode), an odd-sized RGB image (colour
    transform)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:160, :160]
    ct = np.where((yy - 80) ** 2 + (xx - 80) ** 2 < 70 ** 2, 40 + yy + xx, -2000).astype(np.int16)
    ct += rng.integers(-20, 20, ct.shape, dtype=np.int16)
    rings = (((yy - 80) ** 2 + (xx - 80) ** 2) % 4096).astype(np.uint16)
    rgb = rng.integers(0, 256, (45, 61, 3), dtype=np.uint8)
    return [(ct, {"bits_stored": 16}), (rings, {"bits_stored": 12}), (rgb, {})]


def warm_up() -> None:
    """Compile the wavelet coder now (numba; cached on disk after the first
    time) rather than on the first images."""
    start = time.monotonic()
    for pixels, options in _warm_up_samples():
        data = wavelet.encode(pixels, **options)
        wavelet.decode(data)
        wavelet.decode(data, level=min(1, wavelet.info(data).levels))
    LOG.info("wavelet coder ready in %.1f s", time.monotonic() - start)


def serve(settings: Settings) -> None:
    webcache_store(settings).check()  # a bad location stops the service at start, not at the first image
    threading.Thread(target=warm_up, name="wavelet-warm-up", daemon=True).start()
    start_heartbeat(settings, "curator", {"webcache": settings.webcache_location})
    ticker("curator-sweep", settings.curator_sweep_seconds, lambda: sweep(settings))
    run_worker(settings, "curator", [Q_CURATOR], [tasks.register])
