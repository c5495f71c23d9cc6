"""The DICOM SCP: handlers bound to a pynetdicom AE.

Handlers are plain functions taking the event and their dependencies, so
each can be called with a fake event in a unit test:

* :func:`handle_echo` — Verification, PS3.4 Annex A.
* :func:`handle_store` — Storage, PS3.4 Annex B (B.2.3 statuses). The
  dataset is written as it arrived, never decoded and re-encoded.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer
from pydicom.dataset import Dataset
from sqlalchemy import select

from dbserver.models import DicomNode
from gateway.ingest import Ingestor, Origin, network_file_meta
from services.db import get_engine
from services.dicom import STORAGE_TRANSFER_SYNTAXES
from services.errors import DuplicateRejectedError, InvalidDicomError, PacsError, UnknownCallingAEError
from services.settings import Settings

LOG = logging.getLogger(__name__)

# PS3.4 Annex B.2.3 / PS3.7 Annex C statuses, named
SUCCESS = 0x0000
REFUSED_OUT_OF_RESOURCES = 0xA700
REFUSED_NOT_AUTHORIZED = 0x0124
ERROR_CANNOT_UNDERSTAND = 0xC000
ERROR_DATASET_MISMATCH = 0xA900
DUPLICATE_SOP_INSTANCE = 0x0111
PROCESSING_FAILURE = 0x0110

STATUS_FOR_ERROR: dict[type[Exception], int] = {
    InvalidDicomError: ERROR_CANNOT_UNDERSTAND,
    DuplicateRejectedError: DUPLICATE_SOP_INSTANCE,
    UnknownCallingAEError: REFUSED_NOT_AUTHORIZED,
}

# used to refuse every association when nodes are required but none is
# configured (pynetdicom reads an empty list as "accept all")
_NO_NODE = "*NO*KNOWN*NODE*"


def _status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


def handle_echo(event: evt.Event) -> int:
    """C-ECHO: always Success once associated (PS3.4 A.4)."""
    return SUCCESS


def handle_store(event: evt.Event, ingestor: Ingestor, known_aes: KnownAEs) -> Dataset | int:
    """C-STORE: spool the object durably, then answer (PS3.4 B.2.3)."""
    calling = event.assoc.requestor.ae_title.strip()
    try:
        known_aes.check(calling)
        req = event.request
        meta = network_file_meta(req.AffectedSOPClassUID, req.AffectedSOPInstanceUID,
                                 event.context.transfer_syntax, calling)
        ingestor.ingest(event.encoded_dataset(include_meta=False), Origin("dicom", calling,
                        f"{event.assoc.requestor.address}:{event.assoc.requestor.port}"), meta)
    except PacsError as exc:
        code = next((c for t, c in STATUS_FOR_ERROR.items() if isinstance(exc, t)), PROCESSING_FAILURE)
        LOG.warning("C-STORE from %s refused (0x%04X): %s", calling, code, exc)
        return _status(code, str(exc))
    except OSError as exc:
        LOG.error("C-STORE from %s: spool write failed: %s", calling, exc)
        return _status(REFUSED_OUT_OF_RESOURCES, "cannot write to the spool")
    return SUCCESS


class KnownAEs:
    """The calling AE titles allowed when ``PACS_DICOM_REQUIRE_KNOWN_AE`` is on,
    re-read from the DICOM nodes table every few seconds."""

    def __init__(self, settings: Settings, ttl: float = 5.0) -> None:
        self.required = settings.dicom_require_known_ae
        self.settings = settings
        self.ttl = ttl
        self._titles: set[str] = set()
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    def titles(self) -> set[str]:
        with self._lock:
            if time.monotonic() - self._loaded_at > self.ttl:
                with get_engine(self.settings).connect() as conn:
                    self._titles = {t.strip() for t in conn.execute(select(DicomNode.ae_title)).scalars()}
                self._loaded_at = time.monotonic()
            return self._titles

    def check(self, calling: str) -> None:
        if self.required and calling not in self.titles():
            raise UnknownCallingAEError(f"calling AE {calling!r} is not a configured node")

    def apply(self, ae: AE) -> None:
        """Refuse unknown callers at association time (PS3.8 A-ASSOCIATE-RJ)."""
        if self.required:
            titles = sorted(self.titles())
            ae.require_calling_aet = titles or [_NO_NODE]


class GatewayServer(ThreadedAssociationServer):
    """An association server that accepts on a socket it is given (shared by
    several gateway processes) and disables Nagle on every connection."""

    def __init__(self, *args: Any, listen_socket: socket.socket | None = None, **kwargs: Any) -> None:
        self._given_socket = listen_socket
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        if self._given_socket is not None:
            self.socket.close()
            self.socket = self._given_socket
            self.server_address = self.socket.getsockname()
            if self.ae.network_timeout is not None:
                self.socket.settimeout(self.ae.network_timeout)
            return
        super().server_bind()

    def server_activate(self) -> None:
        if self._given_socket is None:
            super().server_activate()

    def get_request(self) -> tuple[socket.socket, Any]:
        client, address = super().get_request()
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address


def make_ae(settings: Settings) -> AE:
    ae = AE(ae_title=settings.dicom_ae_title)
    ae.maximum_pdu_size = settings.dicom_max_pdu
    ae.network_timeout = 60
    ae.acse_timeout = 30
    ae.dimse_timeout = 60
    ae.maximum_associations = 64
    ae.add_supported_context(Verification, ALL_TRANSFER_SYNTAXES)
    for cx in AllStoragePresentationContexts:
        ae.add_supported_context(cx.abstract_syntax, STORAGE_TRANSFER_SYNTAXES)
    return ae


def handlers(ingestor: Ingestor, known_aes: KnownAEs) -> list:
    return [
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [ingestor, known_aes]),
    ]


def serve(settings: Settings, ingestor: Ingestor, listen_socket: socket.socket | None = None,
          stop: threading.Event | None = None) -> None:
    """Run the SCP until ``stop`` is set."""
    ae = make_ae(settings)
    known_aes = KnownAEs(settings)
    known_aes.apply(ae)
    server = GatewayServer(ae, (settings.dicom_host, settings.dicom_port), settings.dicom_ae_title,
                           ae.supported_contexts, None, handlers(ingestor, known_aes),
                           listen_socket=listen_socket)
    ae._servers.append(server)  # noqa: SLF001 - so ae.shutdown() stops it
    thread = threading.Thread(target=server.serve_forever, name="dicom-listener", daemon=True)
    thread.start()
    LOG.info("DICOM SCP %s listening on %s:%s", settings.dicom_ae_title, *server.server_address[:2])
    stop = stop or threading.Event()
    try:
        while not stop.wait(known_aes.ttl):
            try:
                known_aes.apply(ae)
            except Exception:  # noqa: BLE001
                LOG.exception("cannot refresh the known AE titles")
    finally:
        server.shutdown()
