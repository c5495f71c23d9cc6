"""Bad input on the DICOM port, end to end against a cluster under ``pacs up``
with real peers: malformed datasets get a failure status with an error
comment, garbage drops that association only, and nothing partial reaches
the archive or the index (DESIGN.md, invariants)."""

from __future__ import annotations

import errno
import random
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification

from services.dicom import IMPLEMENTATION_CLASS_UID
from tests.cluster import Cluster
from tests.dicomdata import ct_dataset, encode, write_part10

SUCCESS = 0x0000
ERROR_CANNOT_UNDERSTAND = 0xC000
SETTLE_TIMEOUT = 60.0
DROP_TIMEOUT = 5.0

pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI")


# --- a real DICOM peer ------------------------------------------------------------------------
class Peer:
    """pynetdicom SCU: one association, several C-STOREs on it."""

    def __init__(self, port: int, ae_title: str = "GOODSCU") -> None:
        ae = AE(ae_title=ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        ae.add_requested_context(Verification)
        self.assoc = ae.associate("127.0.0.1", port, ae_title="PACS")

    def __enter__(self) -> Peer:
        assert self.assoc.is_established, "the gateway refused an association"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.assoc.is_established:
            self.assoc.release()

    def store(self, what: Dataset | Path) -> tuple[int | None, str]:
        """(status, error comment); status None when the gateway answered nothing."""
        rsp = self.assoc.send_c_store(what)
        if "Status" not in rsp:
            return None, ""
        return int(rsp.Status), str(rsp.get("ErrorComment", ""))


@pytest.fixture
def send_raw_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make pynetdicom send a file's dataset bytes without decoding them."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)


# --- the cluster, shared by the tests of this module ---------------------------------------
@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """``pacs up`` on the embedded defaults, shared: each test checks that
    what it did left the cluster as it found it, plus one valid instance."""
    c = Cluster(tmp_path_factory.mktemp("bad-input"))
    try:
        yield c.start()
    finally:
        c.destroy()


def index_counts(c: Cluster) -> tuple[int, int, int]:
    """(instances, verified cache copies, spool files), without a CLI round trip."""
    instances = c.sql("SELECT count(*) FROM instances")[0][0]
    archived = c.sql("SELECT count(*) FROM object_copies WHERE tier = 'cache' AND verified_at IS NOT NULL")[0][0]
    spooled = sum(1 for p in (c.data_dir / "spool").rglob("*.dcm"))
    return instances, archived, spooled


def snapshot(c: Cluster) -> dict[str, int]:
    return c.status()["counts"]


def assert_unharmed(c: Cluster, before: dict[str, int], sent_ok: int = 0) -> None:
    """The listener still serves a valid store from another association, and
    the index and archive hold exactly what was accepted (``sent_ok`` valid
    instances sent meanwhile, plus this one), nothing partial."""
    good = ct_dataset()
    with Peer(c.dicom_port) as peer:
        assert peer.store(good) == (SUCCESS, ""), "a valid store after bad input must succeed"
    expected = sent_ok + 1
    inbox = c.data_dir / "archive" / "inbox"
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        instances, archived, spooled = index_counts(c)
        # a resent object's second link into the inbox may still wait for its task
        inbox_files = list(inbox.iterdir()) if inbox.is_dir() else []
        if (instances >= before["instances"] + expected and archived >= before["archived_objects"] + expected
                and spooled == 0 and not inbox_files):
            break
        assert time.monotonic() < deadline, (
            f"the valid store was not indexed and archived: {instances=} {archived=} {spooled=} {inbox_files=}")
        time.sleep(0.2)
    status = c.status()
    counts = status["counts"]
    assert counts["instances"] == before["instances"] + expected, counts
    assert counts["archived_objects"] == before["archived_objects"] + expected, counts
    assert status["cache"]["files"] == counts["archived_objects"], status
    assert status["spool"]["files"] == 0, status
    leftovers = [p for p in (c.data_dir / "spool").rglob("*") if p.is_file() and p.name != ".lock"]
    assert leftovers == [], f"something partial was left in the spool: {leftovers}"
    assert not inbox.is_dir() or list(inbox.iterdir()) == [], list(inbox.iterdir())
    assert c.sql("SELECT count(*) FROM instances WHERE sop_instance_uid = ?", str(good.SOPInstanceUID)) == [(1,)]
    assert c.sql("SELECT count(*) FROM superseded_objects") == [(0,)]


def assert_failure_with_comment(result: tuple[int | None, str], expected: int = ERROR_CANNOT_UNDERSTAND) -> None:
    status, comment = result
    assert status is not None, "the gateway answered no status"
    assert status == expected, f"status 0x{status:04X} ({comment!r}), expected 0x{expected:04X}"
    assert comment.strip(), f"status 0x{status:04X} without an ErrorComment"


# --- malformed datasets through pynetdicom ----------------------------------------------------
def test_dataset_without_sop_instance_uid(gw: Cluster, tmp_path: Path, send_raw_files: None) -> None:
    before = snapshot(gw)
    path = tmp_path / "no-sop-uid.dcm"
    write_part10(path, ct_dataset(SOPInstanceUID=None), sop_instance_uid=generate_uid())
    with Peer(gw.dicom_port) as peer:
        assert_failure_with_comment(peer.store(path))
        assert peer.store(ct_dataset()) == (SUCCESS, ""), "the association must survive a refused C-STORE"
    assert_unharmed(gw, before, sent_ok=1)


@pytest.mark.parametrize("bad_uid", ["1.2/../3", "../../../../tmp/pacs-escape", "1.2.840..10008.99"])
def test_uid_with_path_characters_as_affected_sop_instance(gw: Cluster, bad_uid: str) -> None:
    """pynetdicom sends the dataset's SOP Instance UID as the request's
    Affected SOP Instance UID: both are bad."""
    before = snapshot(gw)
    with Peer(gw.dicom_port) as peer:
        assert_failure_with_comment(peer.store(ct_dataset(SOPInstanceUID=bad_uid)))
    assert not Path("/tmp/pacs-escape").exists()
    assert_unharmed(gw, before)


@pytest.mark.parametrize("bad_uid", ["1.2/../3", "../../../../tmp/pacs-escape"])
def test_uid_with_path_characters_in_dataset_only(gw: Cluster, tmp_path: Path, send_raw_files: None,
                                                  bad_uid: str) -> None:
    before = snapshot(gw)
    path = tmp_path / "bad-uid.dcm"
    write_part10(path, ct_dataset(SOPInstanceUID=bad_uid), sop_instance_uid=generate_uid())
    with Peer(gw.dicom_port) as peer:
        assert_failure_with_comment(peer.store(path))
    assert not Path("/tmp/pacs-escape").exists()
    assert_unharmed(gw, before)


def _cut(where: str) -> tuple[Dataset, bytes]:
    ds = ct_dataset()
    data = encode(ds)
    raw = pydicom.dcmread(DicomBytesIO(data), force=True)
    pixels = raw._dict[pydicom.tag.Tag("PixelData")]  # noqa: SLF001 - the elements as read, with offsets
    rows = raw._dict[pydicom.tag.Tag("Rows")]  # noqa: SLF001
    cut = {"mid-pixel-data": pixels.value_tell + pixels.length // 2,
           "in-pixel-data-length-field": pixels.value_tell - 2,
           "in-next-element-tag": rows.value_tell + rows.length + 3}[where]
    return ds, data[:cut]


@pytest.mark.parametrize("where", ["mid-pixel-data", "in-pixel-data-length-field", "in-next-element-tag"])
def test_truncated_dataset(gw: Cluster, tmp_path: Path, send_raw_files: None, where: str) -> None:
    before = snapshot(gw)
    ds, data = _cut(where)
    path = tmp_path / "truncated.dcm"
    write_part10(path, ds, data)
    with Peer(gw.dicom_port) as peer:
        assert_failure_with_comment(peer.store(path))
    assert_unharmed(gw, before)


# --- garbage on the port: raw sockets, hand-built PDUs (PS3.8 §9.3) ---------------------------
def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def associate_rq(calling: str = "RAWSCU", called: str = "PACS") -> bytes:
    """A-ASSOCIATE-RQ PDU (PS3.8 §9.3.2) proposing Verification and CT Image Storage."""
    contexts = b"".join(
        _item(0x20, bytes([pc_id, 0, 0, 0]) + _item(0x30, abstract.encode())
              + _item(0x40, ImplicitVRLittleEndian.encode()))
        for pc_id, abstract in ((1, Verification), (3, CTImageStorage)))
    user_info = _item(0x50, _item(0x51, struct.pack(">I", 16384)) + _item(0x52, IMPLEMENTATION_CLASS_UID.encode()))
    body = (struct.pack(">HH", 1, 0) + called.encode().ljust(16) + calling.encode().ljust(16) + b"\x00" * 32
            + _item(0x10, b"1.2.840.10008.3.1.1.1") + contexts + user_info)
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def p_data_tf(*pdvs: bytes) -> bytes:
    """P-DATA-TF PDU (PS3.8 §9.3.5) holding these PDV items, possibly none."""
    body = b"".join(pdvs)
    return struct.pack(">BBI", 0x04, 0, len(body)) + body


A_ASSOCIATE_AC, A_ASSOCIATE_RJ, A_ABORT = 0x02, 0x03, 0x07


def wait_dropped(sock: socket.socket, timeout: float = DROP_TIMEOUT) -> str:
    """What the gateway did with this connection within ``timeout``:
    ``closed``, ``aborted`` (A-ABORT / A-ASSOCIATE-RJ PDU) or ``open``."""
    sock.settimeout(0.5)
    received = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return "closed"
        if not chunk:
            return "closed"
        received += chunk
        if received[0] in (A_ABORT, A_ASSOCIATE_RJ):
            return "aborted"
        return f"answered PDU type 0x{received[0]:02X}"
    return "open"


def send_garbage(sock: socket.socket, garbage: bytes) -> str:
    """Send ``garbage``, then end our side; the gateway may drop the
    connection before we are done, which is the outcome wanted."""
    try:
        sock.sendall(garbage)
        sock.shutdown(socket.SHUT_WR)
    except (BrokenPipeError, ConnectionResetError):
        return "closed"
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            return "closed"
        raise
    return wait_dropped(sock)


def raw_associate(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(associate_rq())
    header = sock.recv(6)
    assert header and header[0] == A_ASSOCIATE_AC, f"association not accepted: {header!r}"
    length = struct.unpack(">I", header[2:6])[0]
    while length:
        length -= len(sock.recv(length))
    return sock


@pytest.mark.parametrize("garbage", [
    pytest.param(bytes(random.Random(20240611).getrandbits(8) for _ in range(4096)), id="random-bytes"),
    pytest.param(b"\x01\x00\xff\xff\xff\xf0" + bytes(random.Random(7).getrandbits(8) for _ in range(512)),
                 id="associate-rq-header-with-huge-length"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: pacs\r\n\r\n", id="http-request"),
])
def test_garbage_on_the_port(gw: Cluster, garbage: bytes) -> None:
    before = snapshot(gw)
    with socket.create_connection(("127.0.0.1", gw.dicom_port), timeout=10) as sock:
        assert send_garbage(sock, garbage) in ("closed", "aborted")
    assert_unharmed(gw, before)


@pytest.mark.parametrize("pdu", [
    pytest.param(p_data_tf(), id="empty-p-data-tf"),
    pytest.param(p_data_tf(struct.pack(">IB", 2, 3) + b"\x03"), id="pdv-item-shorter-than-its-header"),
    pytest.param(p_data_tf(struct.pack(">IBB", 4000, 3, 0x03) + b"\x00" * 10), id="pdv-item-longer-than-pdu"),
])
def test_invalid_p_data_after_association(gw: Cluster, pdu: bytes) -> None:
    """An invalid P-DATA-TF (PS3.8 §9.3.5: one or more PDV items, each whole)
    on an established association: that association is aborted or closed."""
    before = snapshot(gw)
    with raw_associate(gw.dicom_port) as sock:
        sock.sendall(pdu)
        outcome = wait_dropped(sock)
    assert outcome in ("closed", "aborted"), (
        f"after an invalid P-DATA-TF the association is still {outcome} after {DROP_TIMEOUT:.0f} s; "
        "it should be aborted (A-ABORT) or closed")
    assert_unharmed(gw, before)


# --- the same on PostgreSQL + Redis -------------------------------------------------------------


def test_bad_input_on_postgres(pg_cluster: Cluster, tmp_path: Path, send_raw_files: None) -> None:
    """Each kind of bad input in turn, on the production backends."""
    c = pg_cluster
    before = snapshot(c)
    ds, truncated = _cut("mid-pixel-data")
    no_sop_uid, bad_uid, cut = tmp_path / "no-sop-uid.dcm", tmp_path / "bad-uid.dcm", tmp_path / "truncated.dcm"
    write_part10(no_sop_uid, ct_dataset(SOPInstanceUID=None), sop_instance_uid=generate_uid())
    write_part10(bad_uid, ct_dataset(SOPInstanceUID="1.2/../3"), sop_instance_uid=generate_uid())
    write_part10(cut, ds, truncated)
    with Peer(c.dicom_port) as peer:
        assert_failure_with_comment(peer.store(no_sop_uid))
        assert_failure_with_comment(peer.store(ct_dataset(SOPInstanceUID="1.2/../3")))
        assert_failure_with_comment(peer.store(bad_uid))
        assert_failure_with_comment(peer.store(cut))
        assert peer.store(ct_dataset()) == (SUCCESS, ""), "the association must survive refused C-STOREs"
    with socket.create_connection(("127.0.0.1", c.dicom_port), timeout=10) as sock:
        assert send_garbage(sock, bytes(random.Random(20240611).getrandbits(8) for _ in range(4096))) in (
            "closed", "aborted")
    with raw_associate(c.dicom_port) as sock:
        sock.sendall(p_data_tf(struct.pack(">IBB", 4000, 3, 0x03) + b"\x00" * 10))
        assert wait_dropped(sock) in ("closed", "aborted")
    assert_unharmed(c, before, sent_ok=1)


# --- unknown calling AE ----------------------------------------------------------------------
def test_unknown_calling_ae_is_rejected_until_configured(make_cluster: Any) -> None:
    c: Cluster = make_cluster("embedded", PACS_DICOM_REQUIRE_KNOWN_AE="1")
    # the harness's readiness probe is dcmtk echoscu, calling AE ECHOSCU
    c.pacs("node", "add", "ECHOSCU", "127.0.0.1", "104")
    c.pacs("node", "add", "KNOWNSCU", "127.0.0.1", "104")
    c.start()

    stranger = Peer(c.dicom_port, "STRANGER")
    assert stranger.assoc.is_rejected, (
        f"an unknown calling AE must be rejected at association time (aborted: {stranger.assoc.is_aborted});"
        f" cluster log:\n{c.log()[-4000:]}")
    with Peer(c.dicom_port, "KNOWNSCU") as peer:
        assert peer.store(ct_dataset()) == (SUCCESS, ""), "the listener must still serve known nodes"

    c.pacs("node", "add", "STRANGER", "127.0.0.1", "104")
    added = time.monotonic()
    while True:
        peer = Peer(c.dicom_port, "STRANGER")
        if peer.assoc.is_established:
            break
        assert time.monotonic() - added < 6.5, "a node added with `pacs node add` is accepted within ~6 s"
        time.sleep(0.25)
    with peer:
        assert peer.store(ct_dataset()) == (SUCCESS, "")
    c.wait_indexed(2, timeout=SETTLE_TIMEOUT)

    c.pacs("node", "remove", "STRANGER")
    removed = time.monotonic()
    while True:
        peer = Peer(c.dicom_port, "STRANGER")
        if peer.assoc.is_rejected:
            break
        peer.assoc.release()
        assert time.monotonic() - removed < 6.5, "a removed node is refused again within ~6 s"
        time.sleep(0.25)
    status = c.status()
    assert status["counts"]["instances"] == 2 and status["spool"]["files"] == 0, status
