"""The DICOM SCP handlers: C-ECHO and C-STORE.

Handlers are plain functions taking the event (pynetdicom's attribute
names) and their dependencies, so each can be called with a fake event in a
unit test; :mod:`gateway.association` runs them for each association:

* :func:`handle_echo` — Verification, PS3.4 Annex A.
* :func:`handle_store` — Storage, PS3.4 Annex B (B.2.3 statuses). The
  dataset is written as it arrived, never decoded and re-encoded.
* :func:`handle_worklist_find` — Modality Worklist, PS3.4 Annex K.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AllStoragePresentationContexts
from pynetdicom.sop_class import ModalityWorklistInformationFind, Verification
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from dbserver.models import DicomNode
from dbserver.worklist import worklist_matches
from gateway.association import C_ECHO_RQ, C_FIND_RQ, C_STORE_RQ, Acceptor, AcceptorConfig
from gateway.ingest import Ingestor, Origin, network_file_meta
from services.db import get_engine
from services.dicom import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME, STORAGE_TRANSFER_SYNTAXES
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
PENDING = 0xFF00
SOP_CLASS_NOT_SUPPORTED = 0x0122
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = 0xA900

STATUS_FOR_ERROR: dict[type[Exception], int] = {
    InvalidDicomError: ERROR_CANNOT_UNDERSTAND,
    DuplicateRejectedError: DUPLICATE_SOP_INSTANCE,
    UnknownCallingAEError: REFUSED_NOT_AUTHORIZED,
}


def _status(code: int, comment: str = "") -> Dataset:
    ds = Dataset()
    ds.Status = code
    if comment:
        ds.ErrorComment = comment[:64]
    return ds


def handle_echo(event: Any) -> int:
    """C-ECHO: always Success once associated (PS3.4 A.4)."""
    return SUCCESS


def handle_store(event: Any, ingestor: Ingestor, known_aes: KnownAEs) -> Dataset | int:
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


def handle_worklist_find(event: Any, settings: Settings, known_aes: KnownAEs):  # noqa: ANN201
    """C-FIND, Modality Worklist Information Model (PS3.4 K.4.1): one
    pending response per scheduled order that matches, then Success."""
    known_aes.check(event.assoc.requestor.ae_title.strip())
    if event.context.abstract_syntax != ModalityWorklistInformationFind:
        yield _status(SOP_CLASS_NOT_SUPPORTED, "only the Modality Worklist model is served")
        return
    try:
        query = event.identifier
    except Exception as exc:  # noqa: BLE001 - a malformed identifier
        yield _status(IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"unreadable identifier: {exc}")
        return
    for item in worklist_matches(settings, query):
        yield PENDING, item


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
        """The configured AE titles. When the database cannot be read, the
        list read last stands; with none read yet, the error propagates."""
        with self._lock:
            if time.monotonic() - self._loaded_at > self.ttl:
                try:
                    with get_engine(self.settings).connect() as conn:
                        self._titles = {t.strip() for t in conn.execute(select(DicomNode.ae_title)).scalars()}
                except SQLAlchemyError as exc:
                    if not self._loaded_at:
                        raise
                    LOG.warning("known AE titles not re-read, the last list stands: %s", exc)
                self._loaded_at = time.monotonic()
            return self._titles

    def check(self, calling: str) -> None:
        if self.required and calling not in self.titles():
            raise UnknownCallingAEError(f"calling AE {calling!r} is not a configured node")

    def accepts(self, calling: str) -> bool:
        """Whether an association from ``calling`` may be accepted (else it is
        rejected: PS3.8 A-ASSOCIATE-RJ, calling AE title not recognized)."""
        return not self.required or calling in self.titles()


def supported_contexts() -> dict[str, list[str]]:
    """Abstract syntax -> the transfer syntaxes we accept, in our order of
    preference (the first one the requestor proposes that we know wins)."""
    supported = {Verification: [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian],
                 ModalityWorklistInformationFind: [ExplicitVRLittleEndian, ImplicitVRLittleEndian]}
    for cx in AllStoragePresentationContexts:
        supported[cx.abstract_syntax] = STORAGE_TRANSFER_SYNTAXES
    return supported


def handlers(ingestor: Ingestor, known_aes: KnownAEs) -> dict[int, Callable[[Any], Any]]:
    """DIMSE command field -> handler, dependencies bound."""
    return {
        C_ECHO_RQ: handle_echo,
        C_STORE_RQ: lambda event: handle_store(event, ingestor, known_aes),
        C_FIND_RQ: lambda event: handle_worklist_find(event, ingestor.settings, known_aes),
    }


def acceptor_config(settings: Settings, ingestor: Ingestor, known_aes: KnownAEs) -> AcceptorConfig:
    return AcceptorConfig(
        ae_title=settings.dicom_ae_title,
        supported=supported_contexts(),
        handlers=handlers(ingestor, known_aes),
        max_pdu=settings.dicom_max_pdu,
        accept_calling=known_aes.accepts,
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        implementation_version_name=IMPLEMENTATION_VERSION_NAME,
    )


def serve(settings: Settings, ingestor: Ingestor, listen_socket: socket.socket,
          stop: threading.Event | None = None) -> None:
    """Run the SCP on ``listen_socket`` until ``stop`` is set."""
    known_aes = KnownAEs(settings)
    acceptor = Acceptor(listen_socket, acceptor_config(settings, ingestor, known_aes))
    thread = threading.Thread(target=acceptor.serve_forever, name="dicom-listener", daemon=True)
    thread.start()
    LOG.info("DICOM SCP %s listening on %s:%s", settings.dicom_ae_title, *listen_socket.getsockname()[:2])
    stop = stop or threading.Event()
    try:
        stop.wait()
    finally:
        acceptor.shutdown()
        thread.join(2)
