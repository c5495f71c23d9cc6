"""Accepting TCP connections until told to stop (the DICOM and HL7
listeners)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any


def accept_loop(sock: socket.socket, stop: threading.Event,
                on_connection: Callable[[socket.socket, Any], None],
                pause: Callable[[], float] | None = None) -> None:
    """Accept on ``sock`` and hand each connection to ``on_connection``
    until ``stop`` is set (checked every half second). ``pause`` may ask for
    a short wait before each accept (a busy process letting an idle one
    take the next connection)."""
    sock.settimeout(0.5)
    while not stop.is_set():
        delay = pause() if pause else 0.0
        if delay:
            time.sleep(delay)
        try:
            conn, address = sock.accept()
        except TimeoutError:
            continue
        except OSError:
            if stop.is_set():
                return
            raise
        on_connection(conn, address)
