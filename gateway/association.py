"""The association acceptor: PS3.8 upper layer and the DIMSE messages the
gateway serves, one thread per association.

Why not pynetdicom's server here: its two polling threads per association
and per-PDU Python work cost about 2 ms of CPU per instance on this
hardware, more than writing, hashing and fsyncing the object. This acceptor
blocks in ``recv_into`` (no polling), reads each PDU into one buffer and
hands the dataset to the same handlers, with pynetdicom's event attribute
names, so each handler stays a plain function testable with a fake event.
pynetdicom remains our SCU and the peer the tests use.
"""

from __future__ import annotations

import io
import logging
import select
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from gateway import pdu as P
from services.net import accept_loop
from gateway.dimse import (
    C_CANCEL_RQ,
    C_ECHO_RQ,
    C_FIND_RQ,
    C_STORE_RQ,
    Command,
    decode_command,
    encode_response,
)

LOG = logging.getLogger(__name__)

UNRECOGNIZED_OPERATION = 0x0211  # PS3.7 C.4
ARTIM_SECONDS = 30.0
REJECT_LINGER_SECONDS = 5.0  # how long a rejected requestor has to close the connection
ACCEPT_BACKOFF_SECONDS = 0.003

Handler = Callable[[Any], "int | Dataset"]


@dataclass(slots=True)
class Requestor:
    ae_title: str
    address: str
    port: int
    implementation_class_uid: str = ""
    implementation_version_name: str = ""
    maximum_length: int = 0


@dataclass(slots=True)
class AssociationInfo:
    requestor: Requestor
    ae_title: str  # the called AE title


@dataclass(slots=True)
class Context:
    context_id: int
    abstract_syntax: str
    transfer_syntax: str


@dataclass(slots=True)
class Event:
    """What a handler gets: the attribute names of ``pynetdicom.events.Event``."""

    assoc: AssociationInfo
    context: Context
    request: Command
    _dataset: list[memoryview] = field(default_factory=list)

    @property
    def identifier(self) -> Dataset:
        """The request's dataset decoded (a C-FIND identifier: small)."""
        return decode_dataset(self.encoded_dataset(), self.context.transfer_syntax)

    def encoded_dataset(self, include_meta: bool = False) -> bytes | memoryview:
        """The dataset as received; one that came in a single PDV is handed
        over without a copy (a memoryview of the PDU buffer)."""
        if include_meta:
            raise NotImplementedError("the gateway builds its own file meta")
        if len(self._dataset) == 1:
            return self._dataset[0]
        return b"".join(self._dataset)


@dataclass
class AcceptorConfig:
    ae_title: str
    supported: dict[str, list[str]]  # abstract syntax -> transfer syntaxes, in our preference order
    handlers: dict[int, Handler]  # DIMSE command field -> handler
    max_pdu: int = 4 * 1024 * 1024
    network_timeout: float = 60.0
    max_associations: int = 64
    accept_calling: Callable[[str], bool] = lambda _ae: True
    implementation_class_uid: str = ""
    implementation_version_name: str = ""


class _Closed(Exception):
    """The peer closed the connection."""


class Association:
    """One accepted association, served to its end on the calling thread."""

    def __init__(self, sock: socket.socket, address: tuple[str, int], config: AcceptorConfig) -> None:
        self.sock = sock
        self.address = address
        self.config = config
        self.contexts: dict[int, Context] = {}
        self.info: AssociationInfo | None = None
        self.peer_max_pdu = 0

    # --- socket --------------------------------------------------------------
    def _recv_exact(self, n: int) -> memoryview:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:], n - got)
            if k == 0:
                raise _Closed()
            got += k
        return view

    def _read_pdu(self) -> tuple[int, memoryview]:
        header = self._recv_exact(6)
        pdu_type = header[0]
        (length,) = struct.unpack_from(">I", header, 2)
        if pdu_type not in P.PDU_TYPES:
            raise P.ProtocolError(f"unknown PDU type 0x{pdu_type:02X}", P.ABORT_REASON_UNRECOGNIZED_PDU)
        limit = P.MAX_ASSOCIATE_RQ if pdu_type == P.A_ASSOCIATE_RQ else (
            self.config.max_pdu + 6 if self.config.max_pdu else 1 << 31)
        if length > limit:
            raise P.ProtocolError(f"PDU of {length} bytes exceeds the negotiated maximum")
        return pdu_type, self._recv_exact(length)

    def _send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def abort(self, reason: int = P.ABORT_REASON_NOT_SPECIFIED) -> None:
        try:
            self._send(P.encode_abort(P.ABORT_SOURCE_PROVIDER, reason))
        except OSError:
            pass

    # --- lifecycle -----------------------------------------------------------
    def run(self, over_limit: bool = False) -> None:
        try:
            if self._negotiate(over_limit):
                self._serve()
        except P.ProtocolError as exc:
            LOG.warning("association from %s:%s aborted: %s", *self.address[:2], exc)
            self.abort(exc.reason)
        except _Closed:
            LOG.debug("connection from %s:%s closed by the peer", *self.address[:2])
        except TimeoutError:
            LOG.warning("association from %s:%s timed out", *self.address[:2])
            self.abort()
        except OSError as exc:
            LOG.info("connection from %s:%s lost: %s", *self.address[:2], exc)
        except Exception:  # a fault of ours: logged whole, the peer told, the listener goes on
            LOG.exception("association from %s:%s aborted after an internal error", *self.address[:2])
            self.abort()
        finally:
            try:
                self.sock.close()
            except OSError:
                pass

    def _negotiate(self, over_limit: bool) -> bool:
        """A-ASSOCIATE (PS3.8 §7.1): accept, or reject with a reason."""
        self.sock.settimeout(ARTIM_SECONDS)
        pdu_type, body = self._read_pdu()
        if pdu_type != P.A_ASSOCIATE_RQ:
            raise P.ProtocolError(f"expected A-ASSOCIATE-RQ, got PDU type 0x{pdu_type:02X}",
                                  P.ABORT_REASON_UNEXPECTED_PDU)
        rq = P.decode_associate_rq(bytes(body))
        cfg = self.config
        if over_limit:
            self._send_rj(P.RJ_TRANSIENT, P.RJ_SOURCE_PROVIDER_PRESENTATION, P.RJ_REASON_LOCAL_LIMIT_EXCEEDED)
            return False
        if rq.application_context != P.APPLICATION_CONTEXT:
            self._reject(P.RJ_REASON_APPLICATION_CONTEXT, f"application context {rq.application_context!r}", rq)
            return False
        try:
            known = cfg.accept_calling(rq.calling_ae_title)
        except Exception as exc:  # noqa: BLE001 - the node list cannot be read: nobody in unchecked
            LOG.error("association from %s (%s:%s) rejected for now: cannot check its AE title: %s",
                      rq.calling_ae_title, *self.address[:2], exc)
            self._send_rj(P.RJ_TRANSIENT, P.RJ_SOURCE_PROVIDER_PRESENTATION, P.RJ_REASON_TEMPORARY_CONGESTION)
            return False
        if not known:
            self._reject(P.RJ_REASON_CALLING_AE, "calling AE title not recognized", rq)
            return False
        results = []
        for cx in rq.contexts:
            ours = cfg.supported.get(cx.abstract_syntax)
            if ours is None:
                results.append((cx.id, P.PC_ABSTRACT_SYNTAX_NOT_SUPPORTED, ""))
                continue
            chosen = next((ts for ts in cx.transfer_syntaxes if ts in ours), None)
            if chosen is None:
                results.append((cx.id, P.PC_TRANSFER_SYNTAXES_NOT_SUPPORTED, ""))
                continue
            results.append((cx.id, P.PC_ACCEPTANCE, chosen))
            self.contexts[cx.id] = Context(cx.id, cx.abstract_syntax, chosen)
        self.peer_max_pdu = rq.max_pdu_length
        self.info = AssociationInfo(
            Requestor(rq.calling_ae_title, self.address[0], self.address[1], rq.implementation_class_uid,
                      rq.implementation_version_name, rq.max_pdu_length), rq.called_ae_title)
        self._send(P.encode_associate_ac(rq, results, cfg.max_pdu, cfg.implementation_class_uid,
                                         cfg.implementation_version_name))
        self.sock.settimeout(cfg.network_timeout)
        LOG.debug("association from %s (%s:%s): %d of %d contexts accepted", rq.calling_ae_title,
                  *self.address[:2], len(self.contexts), len(rq.contexts))
        return True

    def _reject(self, reason: int, why: str, rq: P.AssociateRQ) -> None:
        LOG.warning("association from %s (%s:%s) rejected: %s", rq.calling_ae_title, *self.address[:2], why)
        self._send_rj(P.RJ_PERMANENT, P.RJ_SOURCE_USER, reason)

    def _send_rj(self, result: int, source: int, reason: int) -> None:
        """Send A-ASSOCIATE-RJ, then wait for the requestor to close the
        connection (PS3.8 Sta13, at most :data:`REJECT_LINGER_SECONDS`).
        Closing at once could reset the connection before the peer has read
        the rejection, which it would then see as an abort."""
        self._send(P.encode_associate_rj(result, source, reason))
        deadline = time.monotonic() + REJECT_LINGER_SECONDS
        try:
            self.sock.shutdown(socket.SHUT_WR)
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                if not self.sock.recv(4096):
                    break
        except OSError:  # timed out, or already closed by the peer
            pass

    def _serve(self) -> None:
        """P-DATA until A-RELEASE or A-ABORT (PS3.8 §9.3.5–9.3.8)."""
        command: list[memoryview] = []
        dataset: list[memoryview] = []
        pending: Command | None = None
        pending_cx = 0
        while True:
            pdu_type, body = self._read_pdu()
            if pdu_type == P.A_RELEASE_RQ:
                self._send(P.encode_release_rp())
                return
            if pdu_type == P.A_ABORT:
                LOG.info("association from %s aborted by the peer", self.info.requestor.ae_title)
                return
            if pdu_type != P.P_DATA_TF:
                raise P.ProtocolError(f"unexpected PDU type 0x{pdu_type:02X}", P.ABORT_REASON_UNEXPECTED_PDU)
            for cx_id, control, fragment in P.iter_pdvs(body):
                if cx_id not in self.contexts:
                    raise P.ProtocolError(f"PDV on presentation context {cx_id}, which was not accepted")
                if control & 0x01:  # command fragment
                    if pending is not None:
                        raise P.ProtocolError("a command arrived before the previous one's dataset")
                    command.append(fragment)
                    if control & 0x02:
                        pending = decode_command(b"".join(command))
                        pending_cx = cx_id
                        command = []
                        if not pending.has_dataset:
                            self._dispatch(pending, pending_cx, [])
                            pending = None
                else:
                    if pending is None or cx_id != pending_cx:
                        raise P.ProtocolError("a dataset fragment without its command")
                    dataset.append(fragment)
                    if control & 0x02:
                        self._dispatch(pending, pending_cx, dataset)
                        pending, dataset = None, []

    def _dispatch(self, request: Command, cx_id: int, dataset: list[memoryview]) -> None:
        if request.CommandField == C_CANCEL_RQ:
            return  # nothing of ours is running: a C-CANCEL that came late is ignored (PS3.7 §9.3.2.3)
        if request.CommandField == C_FIND_RQ and request.CommandField in self.config.handlers:
            self._dispatch_find(request, cx_id, dataset)
            return
        handler = self.config.handlers.get(request.CommandField)
        comment = ""
        if handler is None:
            status = UNRECOGNIZED_OPERATION
            comment = f"operation 0x{request.CommandField:04X} is not served here"
        else:
            assert self.info is not None
            try:
                result = handler(Event(self.info, self.contexts[cx_id], request, dataset))
            except Exception as exc:  # noqa: BLE001 - a handler bug must not kill the association
                LOG.exception("handler for 0x%04X failed", request.CommandField)
                result = _failure(0xC000 if request.CommandField == C_STORE_RQ else 0x0110, str(exc))
            status, comment = _status_and_comment(result)
        self._send_response(request, cx_id, status, comment)


    def _dispatch_find(self, request: Command, cx_id: int, dataset: list[memoryview]) -> None:
        """C-FIND (PS3.4 C.4.1): the handler yields (status, identifier); each
        pending one is sent with its identifier, then the final status. A
        C-CANCEL-RQ between responses ends the search with status Cancel."""
        assert self.info is not None
        context = self.contexts[cx_id]
        status, comment = FIND_FAILED, ""
        try:
            for status, identifier in self.config.handlers[C_FIND_RQ](
                    Event(self.info, context, request, dataset)):
                if status not in PENDING:
                    break
                if self._cancelled(request.MessageID):
                    status = CANCEL
                    break
                self._send_response(request, cx_id, status, "", encode_dataset(identifier, context.transfer_syntax))
            else:
                status = SUCCESS
        except Exception as exc:  # noqa: BLE001 - a handler bug must not kill the association
            LOG.exception("C-FIND handler failed")
            status, comment = FIND_FAILED, str(exc)[:64]
        if isinstance(status, Dataset):
            status, comment = _status_and_comment(status)
        self._send_response(request, cx_id, int(status), comment)

    def _send_response(self, request: Command, cx_id: int, status: int, comment: str = "",
                       identifier: bytes | None = None) -> None:
        response = encode_response(request, status, comment, has_dataset=identifier is not None)
        for chunk in P.encode_p_data(cx_id, response, True, self.peer_max_pdu):
            self._send(chunk)
        if identifier is not None:
            for chunk in P.encode_p_data(cx_id, identifier, False, self.peer_max_pdu):
                self._send(chunk)

    def _cancelled(self, message_id: int) -> bool:
        """Whether the peer sent C-CANCEL-RQ for ``message_id`` meanwhile."""
        if not select.select([self.sock], [], [], 0)[0]:
            return False
        pdu_type, body = self._read_pdu()
        if pdu_type == P.A_ABORT:
            raise _Closed()
        if pdu_type != P.P_DATA_TF:
            raise P.ProtocolError(f"unexpected PDU type 0x{pdu_type:02X} during a C-FIND",
                                  P.ABORT_REASON_UNEXPECTED_PDU)
        for _cx, control, fragment in P.iter_pdvs(body):
            if control & 0x01 and control & 0x02:
                command = decode_command(bytes(fragment))
                if command.CommandField == C_CANCEL_RQ and command.MessageIDBeingRespondedTo == message_id:
                    return True
            raise P.ProtocolError("only C-CANCEL may arrive while a C-FIND is answered")
        return False


SUCCESS = 0x0000
CANCEL = 0xFE00
FIND_FAILED = 0xC000  # PS3.4 C.4.1.1.4: unable to process
PENDING = (0xFF00, 0xFF01)


def decode_dataset(data: bytes | memoryview, transfer_syntax: str) -> Dataset:
    """A small dataset (an identifier) in the context's transfer syntax."""
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        data = zlib.decompress(bytes(data), -zlib.MAX_WBITS)
    ts = UID(transfer_syntax)
    implicit = ts == ImplicitVRLittleEndian
    little = ts != ExplicitVRBigEndian
    return read_dataset(io.BytesIO(bytes(data)), implicit, little)


def encode_dataset(ds: Dataset, transfer_syntax: str) -> bytes:
    fp = DicomBytesIO()
    fp.is_implicit_VR = transfer_syntax == ImplicitVRLittleEndian
    fp.is_little_endian = transfer_syntax != ExplicitVRBigEndian
    write_dataset(fp, ds)
    data = fp.getvalue()
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = compressor.compress(data) + compressor.flush()
    return data


def _status_and_comment(result: int | Dataset) -> tuple[int, str]:
    """A handler's answer (a status, or pynetdicom's status Dataset) as
    (status, error comment)."""
    if isinstance(result, Dataset):
        return int(result.Status), str(result.get("ErrorComment", "") or "")
    return int(result), ""


def _failure(status: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = status
    ds.ErrorComment = comment[:64]
    return ds


class Acceptor:
    """Accepts associations on a listening socket until stopped."""

    def __init__(self, listen_socket: socket.socket, config: AcceptorConfig) -> None:
        self.listen_socket = listen_socket
        self.config = config
        self._active = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def serve_forever(self) -> None:
        accept_loop(self.listen_socket, self._stop, self._start, self._backoff)

    def _backoff(self) -> float:
        """Several processes accept on this socket. One that is busy lets an
        idle one take the next association first, so associations spread
        over the processes instead of piling onto one."""
        with self._lock:
            return min(self._active, 8) * ACCEPT_BACKOFF_SECONDS

    def _start(self, conn: socket.socket, address: tuple[str, int]) -> None:
        conn.settimeout(None)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._active += 1
            over = self._active > self.config.max_associations
        threading.Thread(target=self._run, args=(conn, address, over), daemon=True,
                         name=f"assoc-{address[0]}:{address[1]}").start()

    def _run(self, conn: socket.socket, address: tuple[str, int], over: bool) -> None:
        try:
            Association(conn, address, self.config).run(over_limit=over)
        finally:
            with self._lock:
                self._active -= 1

    def shutdown(self) -> None:
        self._stop.set()


__all__ = ["Acceptor", "AcceptorConfig", "Association", "C_ECHO_RQ", "C_FIND_RQ", "C_STORE_RQ", "Event"]
