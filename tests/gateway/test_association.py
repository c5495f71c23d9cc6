"""The association acceptor against real peers (pynetdicom as SCU, dcmtk's
echoscu/storescu) and hand-built PDUs, on an ephemeral port, with
recording handlers: what each peer gets back, and that one bad association
never harms the next."""

from __future__ import annotations

import io
import os
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom import AE
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import PresentationContext
from pynetdicom.sop_class import (
    CTImageStorage,
    ModalityWorklistInformationFind,
    MRImageStorage,
    PatientRootQueryRetrieveInformationModelFind,
    Verification,
)

from gateway import pdu as P
from gateway.association import C_ECHO_RQ, C_FIND_RQ, C_STORE_RQ, Acceptor, AcceptorConfig
from gateway.dimse import decode_command, encode_response
from services.dicom import STORAGE_TRANSFER_SYNTAXES
from tests.cluster import DCMTK


class Recorder:
    def __init__(self) -> None:
        self.stored: list[tuple[str, str, str, bytes]] = []
        self.status = 0x0000
        self.queries: list[Dataset] = []
        self.matches = 3
        self.delay = 0.0

    def find(self, event):  # noqa: ANN001, ANN201
        """Answer a worklist query with ``self.matches`` pending results that
        echo the requested patient name."""
        query = event.identifier
        self.queries.append(query)
        for n in range(self.matches):
            time.sleep(self.delay)
            ds = Dataset()
            ds.PatientName = query.PatientName
            ds.AccessionNumber = f"ACC{n:04d}"
            yield 0xFF00, ds

    def store(self, event) -> int | Dataset:  # noqa: ANN001
        self.stored.append((event.assoc.requestor.ae_title, event.request.AffectedSOPInstanceUID,
                            event.context.transfer_syntax, event.encoded_dataset()))
        if self.status:
            ds = Dataset()
            ds.Status = self.status
            ds.ErrorComment = "refused for the test"
            return ds
        return 0x0000


def _accept_calling(ae_title: str) -> bool:
    if ae_title == "NODB":  # the list of known nodes cannot be read
        raise ConnectionError("database unreachable")
    return ae_title != "BLOCKED"


@pytest.fixture
def scp() -> Iterator[tuple[int, Recorder, AcceptorConfig]]:
    rec = Recorder()
    sock = socket.create_server(("127.0.0.1", 0))
    config = AcceptorConfig(
        ae_title="PACS",
        supported={Verification: [ImplicitVRLittleEndian, ExplicitVRLittleEndian],
                   CTImageStorage: STORAGE_TRANSFER_SYNTAXES, MRImageStorage: STORAGE_TRANSFER_SYNTAXES,
                   ModalityWorklistInformationFind: [ExplicitVRLittleEndian, ImplicitVRLittleEndian]},
        handlers={C_ECHO_RQ: lambda e: 0, C_STORE_RQ: rec.store, C_FIND_RQ: rec.find},
        max_pdu=65536,
        network_timeout=5,
        accept_calling=_accept_calling,
        implementation_class_uid="1.2.3.4",
        implementation_version_name="TEST",
    )
    acceptor = Acceptor(sock, config)
    thread = threading.Thread(target=acceptor.serve_forever, daemon=True)
    thread.start()
    yield sock.getsockname()[1], rec, config
    acceptor.shutdown()
    thread.join(2)
    sock.close()


def _ae(*contexts: str, title: str = "SCU") -> AE:
    ae = AE(title)
    for cx in contexts:
        ae.add_requested_context(cx, [ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless])
    return ae


def test_echo_and_store_with_pynetdicom(scp) -> None:  # noqa: ANN001
    port, rec, _ = scp
    path = Path(get_testdata_file("CT_small.dcm"))
    ds = pydicom.dcmread(path)
    assoc = _ae(Verification, CTImageStorage, title="MODALITY").associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0
    assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    ae_title, uid, ts, data = rec.stored[0]
    assert (ae_title, uid, ts) == ("MODALITY", ds.SOPInstanceUID, ExplicitVRLittleEndian)
    assert pydicom.dcmread(io.BytesIO(data), force=True).SOPInstanceUID == ds.SOPInstanceUID


def test_large_dataset_fragmented_over_small_pdus(scp) -> None:  # noqa: ANN001
    """A 1 MB dataset sent in 16 KB PDUs arrives whole."""
    port, rec, _ = scp
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.PixelData = os.urandom(1024 * 1024)
    ds.Rows, ds.Columns = 512, 1024
    ae = _ae(CTImageStorage)
    ae.maximum_pdu_size = 16384
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS", max_pdu=16384)
    assert assoc.send_c_store(ds).Status == 0
    assoc.release()
    assert ds.PixelData in rec.stored[0][3]


def test_handler_failure_status_and_comment_reach_the_peer(scp) -> None:  # noqa: ANN001
    port, rec, _ = scp
    rec.status = 0xC000
    assoc = _ae(CTImageStorage).associate("127.0.0.1", port, ae_title="PACS")
    rsp = assoc.send_c_store(pydicom.dcmread(get_testdata_file("CT_small.dcm")))
    assoc.release()
    assert rsp.Status == 0xC000
    assert rsp.ErrorComment == "refused for the test"


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_find_pending_results_then_success(scp, ts: str) -> None:  # noqa: ANN001
    port, rec, _ = scp
    ae = AE("WORKLIST")
    ae.add_requested_context(ModalityWorklistInformationFind, ts)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    query = Dataset()
    query.PatientName = "DOE^J*"
    query.AccessionNumber = ""
    answers = list(assoc.send_c_find(query, ModalityWorklistInformationFind))
    assoc.release()
    statuses = [status.Status for status, _ in answers]
    assert statuses == [0xFF00, 0xFF00, 0xFF00, 0x0000]
    assert [ds.AccessionNumber for _, ds in answers[:3]] == ["ACC0000", "ACC0001", "ACC0002"]
    assert all(ds.PatientName == "DOE^J*" for _, ds in answers[:3])
    assert rec.queries[0].PatientName == "DOE^J*"


def test_find_cancelled_by_the_peer(scp) -> None:  # noqa: ANN001
    port, rec, _ = scp
    rec.matches, rec.delay = 200, 0.01
    ae = AE("WORKLIST")
    ae.add_requested_context(ModalityWorklistInformationFind, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    query = Dataset()
    query.PatientName = "*"
    results = assoc.send_c_find(query, ModalityWorklistInformationFind, msg_id=7)
    statuses = []
    for status, _ in results:
        statuses.append(status.Status)
        if len(statuses) == 1:
            assoc.send_c_cancel(7, assoc.accepted_contexts[0].context_id)
    assoc.release()
    assert statuses[-1] == 0xFE00
    assert len(statuses) < 100


def test_unsupported_context_is_rejected_and_others_accepted(scp) -> None:  # noqa: ANN001
    port, _, _ = scp
    assoc = _ae(Verification, PatientRootQueryRetrieveInformationModelFind).associate(
        "127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
    rejected = {cx.abstract_syntax for cx in assoc.rejected_contexts}
    assoc.release()
    assert accepted == {Verification}
    assert rejected == {PatientRootQueryRetrieveInformationModelFind}


def test_unknown_calling_ae_is_rejected(scp) -> None:  # noqa: ANN001
    port, _, _ = scp
    assoc = _ae(Verification, title="BLOCKED").associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_rejected
    assert _ae(Verification).associate("127.0.0.1", port, ae_title="PACS").is_established


def test_calling_ae_that_cannot_be_checked_is_rejected_for_now(scp) -> None:  # noqa: ANN001
    """When the known nodes cannot be read, the association is rejected as
    transient (PS3.8 9.3.4: rejected-transient, temporary congestion), so
    the modality retries; nobody is let in unchecked, the listener lives."""
    port, _, _ = scp
    assoc = _ae(Verification, title="NODB").associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_rejected
    assert (assoc.acceptor.primitive.result, assoc.acceptor.primitive.result_source,
            assoc.acceptor.primitive.diagnostic) == (2, 3, 1)
    assert _ae(Verification).associate("127.0.0.1", port, ae_title="PACS").is_established


def test_dcmtk_peers(scp, tmp_path: Path) -> None:  # noqa: ANN001
    port, rec, _ = scp
    env = dict(os.environ, TCP_NODELAY="1")
    echo = subprocess.run([str(DCMTK / "echoscu"), "-aec", "PACS", "127.0.0.1", str(port)],
                          capture_output=True, env=env)
    assert echo.returncode == 0, echo.stderr
    store = subprocess.run([str(DCMTK / "storescu"), "-aec", "PACS", "127.0.0.1", str(port),
                            get_testdata_file("CT_small.dcm")], capture_output=True, env=env)
    assert store.returncode == 0, store.stderr
    assert rec.stored and rec.stored[0][0] == "STORESCU"


def _associate_rq(contexts: list[tuple[int, str]], calling: str = "RAW") -> bytes:
    prim = A_ASSOCIATE()
    prim.application_context_name = P.APPLICATION_CONTEXT
    prim.calling_ae_title = calling
    prim.called_ae_title = "PACS"
    pcs = []
    for cx_id, abstract in contexts:
        cx = PresentationContext()
        cx.context_id, cx.abstract_syntax, cx.transfer_syntax = cx_id, abstract, [ImplicitVRLittleEndian]
        pcs.append(cx)
    prim.presentation_context_definition_list = pcs
    ml = MaximumLengthNotification()
    ml.maximum_length_received = 16384
    prim.user_information = [ml]
    rq = A_ASSOCIATE_RQ()
    rq.from_primitive(prim)
    return rq.encode()


def _recv_pdu(sock: socket.socket) -> bytes:
    sock.settimeout(5)
    header = b""
    while len(header) < 6:
        chunk = sock.recv(6 - len(header))
        if not chunk:
            return header
        header += chunk
    (length,) = struct.unpack(">I", header[2:6])
    body = b""
    while len(body) < length:
        body += sock.recv(length - len(body))
    return header + body


def _echo_still_works(port: int) -> None:
    assoc = _ae(Verification).associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established and assoc.send_c_echo().Status == 0
    assoc.release()


@pytest.mark.parametrize("garbage", [os.urandom(4096), b"\x01\x00\xff\xff\xff\xff", b"GET / HTTP/1.0\r\n\r\n"],
                         ids=["random-4k", "huge-pdu-length", "http-request"])
def test_garbage_gets_an_abort_and_the_listener_survives(scp, garbage: bytes) -> None:  # noqa: ANN001
    port, _, _ = scp
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(garbage)
        reply = _recv_pdu(s)
    assert reply[:1] in (bytes([P.A_ABORT]), b"")
    _echo_still_works(port)


def test_empty_p_data_is_aborted(scp) -> None:  # noqa: ANN001
    port, _, _ = scp
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(_associate_rq([(1, Verification)]))
        assert _recv_pdu(s)[0] == P.A_ASSOCIATE_AC
        s.sendall(bytes([P.P_DATA_TF, 0, 0, 0, 0, 0]))
        reply = _recv_pdu(s)
    assert reply[0] == P.A_ABORT
    _echo_still_works(port)


def test_pdv_on_unaccepted_context_is_aborted(scp) -> None:  # noqa: ANN001
    port, _, _ = scp
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(_associate_rq([(1, Verification)]))
        assert _recv_pdu(s)[0] == P.A_ASSOCIATE_AC
        pdv = struct.pack(">IBB", 4, 3, 0x03) + b"\x00\x00"
        s.sendall(bytes([P.P_DATA_TF, 0]) + struct.pack(">I", len(pdv)) + pdv)
        assert _recv_pdu(s)[0] == P.A_ABORT


def test_command_codec_round_trip() -> None:
    from gateway.dimse import Command

    rq = Command(C_STORE_RQ, 7, CTImageStorage, "1.2.3.4", 0x0000)
    rsp = encode_response(rq, 0xC000, "odd comment")
    ds = pydicom.filereader.read_dataset(io.BytesIO(rsp), is_implicit_VR=True, is_little_endian=True)
    assert ds.CommandField == 0x8001 and ds.MessageIDBeingRespondedTo == 7 and ds.Status == 0xC000
    assert ds.ErrorComment.strip() == "odd comment" and ds.AffectedSOPInstanceUID == "1.2.3.4"
    assert ds.CommandGroupLength == len(rsp) - 12
    with pytest.raises(P.ProtocolError):
        decode_command(b"\x00\x00\x00\x01\x04\x00")
