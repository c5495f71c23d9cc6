"""``pacs serve gateway``: the DICOM listener, the HL7 MLLP listener and the
HL7 outbox sender (reports to the RIS).

The parent binds PACS_DICOM_PORT once and starts PACS_GATEWAY_PROCESSES
listener processes that accept on the same socket (pynetdicom spends a few
milliseconds of Python per instance; one process tops out near 200/s), and
restarts one that dies. Each listener owns its spool folder.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading

from gateway import hl7, outbox, scp
from gateway.ingest import Ingestor
from services.heartbeat import start_heartbeat
from services.settings import Settings
from services.supervisor import Child, Supervisor, die_with_parent, python_argv
from services.worker import ticker

LOG = logging.getLogger(__name__)
OUTBOX_INTERVAL = 1.0  # seconds between rounds of the HL7 outbox sender


def serve(settings: Settings) -> None:
    sock = socket.create_server((settings.dicom_host, settings.dicom_port), backlog=256)
    sock.set_inheritable(True)
    fd = sock.fileno()
    children = [Child(f"gateway listener {i}",
                      python_argv("serve", "gateway", "--listener", str(i), "--listen-fd", str(fd)),
                      pass_fds=(fd,))
                for i in range(settings.gateway_processes)]
    LOG.info("DICOM port %s: %d listener processes", settings.dicom_port, len(children))
    hl7.start(settings)
    ticker("hl7-outbox", OUTBOX_INTERVAL, lambda: outbox.deliver_due(settings))
    start_heartbeat(settings, "gateway", {"port": settings.dicom_port, "ae_title": settings.dicom_ae_title})
    Supervisor(children).run()


def serve_listener(settings: Settings, index: int, fd: int) -> None:
    die_with_parent()
    sock = socket.socket(fileno=fd)
    ingestor = Ingestor(f"gateway-{index}", settings).start()
    start_heartbeat(settings, "gateway-listener", {"index": index})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        scp.serve(settings, ingestor, sock, stop)
    finally:
        ingestor.close()
