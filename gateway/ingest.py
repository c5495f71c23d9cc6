"""The ingest funnel: C-STORE, ``pacs import`` (and later STOW-RS) build an
:class:`Origin` and call :meth:`Ingestor.ingest`.

``ingest`` checks the header, writes the object durably to the spool and
returns; the caller may then acknowledge. A background *forwarder* hands
spooled objects to the archive (transfer protocol) and puts their headers on
queue ``db`` in batches. A *confirmer* deletes a spool file only once the
database shows both a verified archive copy and the registered instance,
and re-sends what stayed unconfirmed too long (lost message, crashed
worker). Folders of dead writers are adopted and delivered the same way.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import ImplicitVRLittleEndian
from sqlalchemy import select

from dbserver.models import Instance, ObjectCopy
from dbserver.registration import registered
from services.db import get_engine
from services.dicom import Header, file_meta_bytes, file_meta_end, read_header, read_header_parts
from services.errors import DuplicateRejectedError, InvalidDicomError, PacsError, TransferError
from services.settings import Settings, get_settings
from services.tasks import T_REGISTER_INSTANCES, send
from services.transfer import Outgoing, handoff
from services.uids import check_uid
from gateway.spool import SpoolFile, SpoolFolder, owners

LOG = logging.getLogger(__name__)

BATCH_MAX = 200
FLUSH_INTERVAL = 0.25
QUIET_INTERVAL = 0.02
CONFIRM_INTERVAL = 0.5
ADOPT_INTERVAL = 10.0


class Outcome(Enum):
    STORED = "stored"
    ALREADY_STORED = "already-stored"


@dataclass(frozen=True, slots=True)
class Origin:
    """Where an object came from: ``dicom`` (C-STORE), ``import``, ``stow``."""

    kind: str
    calling_ae_title: str = ""
    remote: str = ""


@dataclass(slots=True)
class Result:
    outcome: Outcome
    header: Header
    sha256: str


@dataclass(slots=True)
class _Pending:
    file: SpoolFile
    meta: dict[str, Any]
    folder: SpoolFolder
    sent_at: float = 0.0
    attempts: int = 0
    queued_at: float = field(default_factory=time.monotonic)


@dataclass
class Ingestor:
    """One writer of the spool (a gateway process, or an import)."""

    owner: str
    settings: Settings = field(default_factory=get_settings)
    adopt_orphans: bool = True

    def __post_init__(self) -> None:
        self.root = self.settings.spool_path
        self.folder = SpoolFolder(self.root, self.owner)
        self._new: list[_Pending] = []
        self._pending: dict[str, _Pending] = {}
        self._adopted: dict[str, SpoolFolder] = {}
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._engine = get_engine(self.settings)
        self._recover(self.folder)

    # --- the funnel ---------------------------------------------------------
    def ingest(self, dataset: bytes, origin: Origin, file_meta: bytes, check_existing: bool = False) -> Result:
        """Check, spool durably and queue one object.

        ``dataset`` is the encoded dataset as received, ``file_meta`` the
        preamble and File Meta group (see :func:`network_file_meta`).
        Raises :class:`InvalidDicomError` (nothing of the object is kept) or
        :class:`DuplicateRejectedError` (the object is kept aside, recorded as
        superseded). ``check_existing`` looks up the index to tell an
        identical re-send apart (``pacs import`` reports it).
        """
        header = read_header_parts(file_meta, dataset)
        if not header.transfer_syntax_uid:
            raise InvalidDicomError("no transfer syntax in the file meta information")
        spooled = self.folder.write([file_meta, dataset])
        # Under keep-first and overwrite, a re-sent object is settled by the
        # registration (content-addressed: an identical one is a no-op), so
        # the hot path asks the database nothing. Only "reject" must know now.
        known = None
        if check_existing or self.settings.duplicate_policy == "reject":
            known = self._current_sha(header.sop_instance_uid)
            if known == spooled.sha256:
                self._drop_if_unreferenced(spooled)
                return Result(Outcome.ALREADY_STORED, header, spooled.sha256)
        # delivered in every case left: a refused duplicate too, which the
        # registration records as superseded (duplicate-rejected)
        self._queue(_Pending(spooled, self._meta(header, spooled, origin), self.folder))
        if known is not None and self.settings.duplicate_policy == "reject":
            raise DuplicateRejectedError(
                f"SOP Instance {header.sop_instance_uid} is already stored with different content")
        return Result(Outcome.STORED, header, spooled.sha256)

    def ingest_file(self, path: Path, origin: Origin) -> Result:
        """Ingest a DICOM file (Part 10, or a bare dataset) from disk."""
        data = Path(path).read_bytes()
        if len(data) >= 132 and data[128:132] == b"DICM":
            meta_end = file_meta_end(data)
            return self.ingest(data[meta_end:], origin, file_meta=data[:meta_end], check_existing=True)
        header = read_header(data)  # a bare dataset: pydicom told its encoding apart
        return self.ingest(data, origin, network_file_meta(
            header.sop_class_uid, header.sop_instance_uid,
            header.transfer_syntax_uid or ImplicitVRLittleEndian, origin.calling_ae_title),
            check_existing=True)

    # --- helpers of the funnel -------------------------------------------------
    def _current_sha(self, sop_instance_uid: str) -> str | None:
        with self._engine.connect() as conn:
            return conn.execute(select(Instance.sha256).where(
                Instance.sop_instance_uid == sop_instance_uid)).scalar()

    def _drop_if_unreferenced(self, spooled: SpoolFile) -> None:
        """A re-sent identical object needs no new delivery — unless an
        earlier copy of it is still on its way in this spool."""
        with self._cv:
            if spooled.sha256 in self._pending or any(p.file.sha256 == spooled.sha256 for p in self._new):
                return
        spooled.path.unlink(missing_ok=True)

    @staticmethod
    def _meta(header: Header, spooled: SpoolFile, origin: Origin, received: float | None = None) -> dict[str, Any]:
        meta = header.to_dict()
        meta.pop("extra", None)
        meta.update(sha256=spooled.sha256, size_bytes=spooled.size,
                    calling_ae_title=origin.calling_ae_title,
                    received_at=datetime.fromtimestamp(received or time.time(), timezone.utc).isoformat())
        return meta

    def _queue(self, item: _Pending) -> None:
        with self._cv:
            self._new.append(item)
            if len(self._new) >= BATCH_MAX:
                self._cv.notify()

    # --- background delivery -------------------------------------------------
    def start(self) -> Ingestor:
        for target, name in ((self._forward_loop, "forwarder"), (self._confirm_loop, "confirmer")):
            thread = threading.Thread(target=target, name=f"{self.owner}-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    def pending_count(self) -> int:
        with self._cv:
            return len(self._new) + len(self._pending)

    def wait_delivered(self, timeout: float) -> bool:
        """Block until everything spooled here is confirmed (or timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pending_count() == 0:
                return True
            time.sleep(0.1)
        return self.pending_count() == 0

    def _forward_loop(self) -> None:
        """Deliver in batches: when one is full, when its oldest object has
        waited FLUSH_INTERVAL, or as soon as a burst pauses (QUIET_INTERVAL
        without a new object), so the last objects of a study do not wait."""
        while not self._stop.is_set():
            with self._cv:
                self._cv.wait(QUIET_INTERVAL)
                now = time.monotonic()
                due = self._new and (len(self._new) >= BATCH_MAX
                                     or now - self._new[0].queued_at >= FLUSH_INTERVAL
                                     or now - self._new[-1].queued_at >= QUIET_INTERVAL)
                batch, self._new = (self._new, []) if due else ([], self._new)
            if batch:
                self._deliver(batch)
        with self._cv:
            batch, self._new = self._new, []
        if batch:
            self._deliver(batch)

    def _deliver(self, batch: list[_Pending]) -> None:
        for start in range(0, len(batch), BATCH_MAX):
            chunk = batch[start:start + BATCH_MAX]
            now = time.monotonic()
            for item in chunk:
                item.sent_at = now
                item.attempts += 1
            with self._cv:
                for item in chunk:
                    self._pending[item.file.sha256] = item
            try:
                handoff([Outgoing(i.file.path, i.file.sha256, i.file.size) for i in chunk],
                        self.settings, self.root)
                send(T_REGISTER_INSTANCES, [i.meta for i in chunk])
            except (TransferError, PacsError, OSError) as exc:
                LOG.warning("delivery of %d objects postponed: %s", len(chunk), exc)
            except Exception as exc:  # noqa: BLE001 - broker errors come in many types
                LOG.warning("delivery of %d objects postponed: %s", len(chunk), exc)

    def _confirm_loop(self) -> None:
        last_adopt = 0.0
        while not self._stop.wait(CONFIRM_INTERVAL):
            try:
                self._confirm()
                if self.adopt_orphans and time.monotonic() - last_adopt > ADOPT_INTERVAL:
                    last_adopt = time.monotonic()
                    self._adopt()
            except Exception:  # noqa: BLE001 - keep delivering; the database may be back soon
                LOG.exception("confirmation pass failed")

    def _confirm(self) -> None:
        with self._cv:
            shas = list(self._pending)
        done: set[str] = set()
        for start in range(0, len(shas), 500):
            part = shas[start:start + 500]
            archived = self._archived(part)
            done |= archived & registered(sorted(archived), self.settings)
        now = time.monotonic()
        stale = []
        with self._cv:
            for sha in done:
                item = self._pending.pop(sha, None)
                if item is not None:
                    item.file.path.unlink(missing_ok=True)
            for item in self._pending.values():
                if now - item.sent_at > self.settings.spool_resend_seconds * min(item.attempts, 8):
                    stale.append(item)
            for item in stale:
                del self._pending[item.file.sha256]
        if stale:
            LOG.info("re-sending %d unconfirmed objects", len(stale))
            self._deliver(stale)
        self._release_adopted()

    def _archived(self, shas: list[str]) -> set[str]:
        with self._engine.connect() as conn:
            return set(conn.execute(select(ObjectCopy.sha256).where(
                ObjectCopy.sha256.in_(shas), ObjectCopy.tier == "cache",
                ObjectCopy.verified_at.is_not(None))).scalars())

    # --- recovery ------------------------------------------------------------
    def _recover(self, folder: SpoolFolder) -> int:
        """Queue every object a folder holds (after a crash, or adopted)."""
        n = 0
        for spooled in folder.files():
            try:
                data = spooled.path.read_bytes()
                header = read_header(data)
            except (InvalidDicomError, OSError) as exc:
                LOG.error("spool file %s unreadable, moved aside: %s", spooled.path.name, exc)
                _quarantine(spooled.path)
                continue
            origin = Origin("recovered", _source_ae(data))
            item = _Pending(spooled, self._meta(header, spooled, origin, spooled.path.stat().st_mtime), folder)
            with self._cv:
                self._new.append(item)
            n += 1
        if n:
            LOG.info("spool %s: %d objects to deliver", folder.path.name, n)
        return n

    def _adopt(self) -> None:
        for owner in owners(self.root):
            if owner == self.owner or owner in self._adopted or owner.startswith("."):
                continue
            folder = SpoolFolder.try_adopt(self.root, owner)
            if folder is None:
                continue
            if self._recover(folder):
                self._adopted[owner] = folder
            else:
                folder.release(remove=True)

    def _release_adopted(self) -> None:
        for owner, folder in list(self._adopted.items()):
            with self._cv:
                busy = any(p.folder is folder for p in self._pending.values()) or any(
                    p.folder is folder for p in self._new)
            if not busy and folder.is_empty():
                folder.release(remove=True)
                del self._adopted[owner]

    def close(self) -> None:
        self.stop()
        for folder in self._adopted.values():
            folder.release()
        self.folder.release(remove=self.folder.is_empty())


def network_file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str,
                      calling_ae_title: str = "") -> bytes:
    """Preamble and File Meta group for a dataset received over the network;
    the UIDs are checked before they go anywhere."""
    return file_meta_bytes(check_uid(sop_class_uid, "Affected SOP Class UID"),
                           check_uid(sop_instance_uid, "Affected SOP Instance UID"),
                           check_uid(transfer_syntax_uid, "Transfer Syntax UID"), calling_ae_title)


def _quarantine(path: Path) -> None:
    aside = path.parent.parent / ".unreadable"
    aside.mkdir(exist_ok=True)
    os.replace(path, aside / path.name)


def _source_ae(data: bytes) -> str:
    """The calling AE title the gateway recorded in the file meta."""
    try:
        meta = pydicom.dcmread(BytesIO(data[:file_meta_end(data)]), force=True).file_meta
        return str(meta.get("SourceApplicationEntityTitle", "")).strip()
    except Exception:  # noqa: BLE001 - an imported file may have none
        return ""
