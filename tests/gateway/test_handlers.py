"""The C-STORE and C-ECHO handlers called with a fake event (PS3.4 B.2.3),
against a real ingest funnel on a temp SQLite database, not started: what is
answered, and what is left in the spool."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from sqlalchemy.exc import SQLAlchemyError
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from dbserver.queries import add_node
from dbserver.registration import register_instances
from dbserver.schema import upgrade
from gateway import scp
from gateway.ingest import Ingestor
from services.db import dispose_engines
from services.dicom import file_meta_end
from services.settings import Settings, load_settings
from tests.dicomdata import ct_dataset, encode

CALLING = "MODALITY1"

# bad UIDs are written on purpose
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR UI", "ignore:The value length")


# --- a fake pynetdicom event -------------------------------------------------------
@dataclass
class FakeRequestor:
    ae_title: str = CALLING
    address: str = "192.0.2.10"
    port: int = 40404


@dataclass
class FakeAssoc:
    requestor: FakeRequestor = field(default_factory=FakeRequestor)


@dataclass
class FakeRequest:
    AffectedSOPClassUID: str
    AffectedSOPInstanceUID: str


@dataclass
class FakeContext:
    transfer_syntax: str


@dataclass
class FakeStoreEvent:
    """The attributes of :class:`pynetdicom.events.Event` a C-STORE handler uses."""

    request: FakeRequest
    context: FakeContext
    dataset: bytes
    assoc: FakeAssoc = field(default_factory=FakeAssoc)

    def encoded_dataset(self, include_meta: bool = True) -> bytes:
        assert not include_meta, "the handler must take the dataset as it arrived, without file meta"
        return self.dataset


# --- C-STORE events ---------------------------------------------------------------------
def store_event(ds: Dataset, data: bytes | None = None, *, sop_instance_uid: str | None = None,
                transfer_syntax: str = ExplicitVRLittleEndian, calling: str = CALLING) -> FakeStoreEvent:
    return FakeStoreEvent(
        request=FakeRequest(str(ds.SOPClassUID), sop_instance_uid or str(ds.SOPInstanceUID)),
        context=FakeContext(transfer_syntax),
        dataset=encode(ds, transfer_syntax) if data is None else data,
        assoc=FakeAssoc(FakeRequestor(ae_title=calling)),
    )


# --- fixtures ----------------------------------------------------------------------------
@pytest.fixture
def settings(tmp_path: Path) -> Iterator[Settings]:
    settings = load_settings(data_dir=tmp_path / "data")
    upgrade(settings)
    yield settings
    dispose_engines()


@pytest.fixture
def ingestor(settings: Settings) -> Iterator[Ingestor]:
    ingestor = Ingestor("gateway-test", settings)  # not started: no delivery threads
    yield ingestor
    ingestor.close()


def call_store(event: FakeStoreEvent, ingestor: Ingestor, known_aes: scp.KnownAEs) -> tuple[int, str]:
    """Run the handler as pynetdicom would; return (status, error comment)."""
    try:
        rsp = scp.handle_store(event, ingestor, known_aes)
    except Exception as exc:  # noqa: BLE001 - the point is that it must not raise
        pytest.fail(f"handle_store raised {type(exc).__module__}.{type(exc).__name__}: {exc} — a malformed "
                    "dataset must be refused by the funnel (InvalidDicomError → 0xC000 with an ErrorComment), "
                    "not escape the handler as an unexpected exception")
    if isinstance(rsp, int):
        return rsp, ""
    return int(rsp.Status), str(rsp.get("ErrorComment", ""))


def spool_entries(ingestor: Ingestor) -> list[str]:
    """Everything in the writer's spool folder but its lock (temp files included)."""
    return sorted(p.name for p in ingestor.folder.path.iterdir() if p.name != ".lock")


# --- tests ---------------------------------------------------------------------------------
def test_echo_is_success() -> None:
    assert scp.handle_echo(object()) == scp.SUCCESS


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
                         ids=["explicit-le", "implicit-le"])
def test_good_dataset_is_spooled_bit_exact(settings: Settings, ingestor: Ingestor, transfer_syntax: str) -> None:
    ds = ct_dataset()
    event = store_event(ds, transfer_syntax=transfer_syntax)

    status, comment = call_store(event, ingestor, scp.KnownAEs(settings))

    assert (status, comment) == (scp.SUCCESS, "")
    files = list(ingestor.folder.files())
    assert len(files) == 1, spool_entries(ingestor)
    data = files[0].path.read_bytes()
    assert files[0].path.name == f"{hashlib.sha256(data).hexdigest()}.dcm"
    assert data[:132] == b"\x00" * 128 + b"DICM"
    assert data[file_meta_end(data):] == event.dataset, "the dataset must be kept exactly as it arrived"
    meta = pydicom.filereader.read_file_meta_info(files[0].path)
    assert meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert meta.TransferSyntaxUID == transfer_syntax
    assert meta.SourceApplicationEntityTitle.strip() == CALLING
    assert pydicom.dcmread(files[0].path).PixelData == ds.PixelData
    assert spool_entries(ingestor) == [files[0].path.name], "no temp file may be left behind"
    assert ingestor.pending_count() == 1, "a stored object is queued for delivery"


def _truncations() -> list:
    """Datasets cut in the middle of an element (never on an element boundary,
    where what remains is a shorter but well-formed dataset)."""
    ds = ct_dataset()
    data = encode(ds)
    raw = pydicom.dcmread(DicomBytesIO(data), force=True)
    elements = {e.tag: e for e in raw._dict.values()}  # noqa: SLF001
    pixels = elements[pydicom.tag.Tag("PixelData")]
    rows = elements[pydicom.tag.Tag("Rows")]
    series = elements[pydicom.tag.Tag("SeriesInstanceUID")]
    return [
        pytest.param(ds, data[:-1], id="last-byte-missing"),
        pytest.param(ds, data[:pixels.value_tell + pixels.length // 2], id="mid-pixel-data"),
        pytest.param(ds, data[:pixels.value_tell - 2], id="in-pixel-data-length-field"),
        pytest.param(ds, data[:rows.value_tell + rows.length + 3], id="in-next-element-tag"),
        pytest.param(ds, data[:series.value_tell + 10], id="mid-series-uid"),
        pytest.param(ds, data[:5], id="first-five-bytes"),
        pytest.param(ds, b"", id="empty"),
    ]


@pytest.mark.parametrize(("ds", "data"), _truncations())
def test_truncated_dataset_is_refused(settings: Settings, ingestor: Ingestor, ds: Dataset, data: bytes) -> None:
    status, comment = call_store(store_event(ds, data), ingestor, scp.KnownAEs(settings))

    assert status == scp.ERROR_CANNOT_UNDERSTAND, (
        f"a dataset cut to {len(data)} bytes got 0x{status:04X} ({comment!r}); expected 0xC000")
    assert comment, "a refused C-STORE needs an ErrorComment the operator can act on"
    assert len(comment) <= 64, "ErrorComment is LO: at most 64 characters"
    assert spool_entries(ingestor) == []
    assert ingestor.pending_count() == 0


def test_missing_sop_instance_uid_is_refused(settings: Settings, ingestor: Ingestor) -> None:
    ds = ct_dataset()
    uid = ds.SOPInstanceUID
    del ds.SOPInstanceUID
    status, comment = call_store(store_event(ds, sop_instance_uid=uid), ingestor, scp.KnownAEs(settings))

    assert status == scp.ERROR_CANNOT_UNDERSTAND
    assert "SOP Instance UID" in comment
    assert spool_entries(ingestor) == []


@pytest.mark.parametrize("bad_uid", ["1.2/../3", "../../../../etc/passwd", "1.2.840..10008", "1.2.3/4",
                                     "1.2.3 4", "1.2.3." + "4" * 70])
@pytest.mark.parametrize("where", ["dataset", "request", "both"])
def test_uid_that_could_touch_a_path_is_refused(settings: Settings, ingestor: Ingestor, tmp_path: Path,
                                                bad_uid: str, where: str) -> None:
    good = generate_uid()
    ds = ct_dataset(SOPInstanceUID=bad_uid if where in ("dataset", "both") else good)
    event = store_event(ds, sop_instance_uid=bad_uid if where in ("request", "both") else good)

    status, comment = call_store(event, ingestor, scp.KnownAEs(settings))

    assert status == scp.ERROR_CANNOT_UNDERSTAND, f"0x{status:04X} {comment!r}"
    assert comment and len(comment) <= 64
    assert spool_entries(ingestor) == []
    assert not any("passwd" in p.name for p in tmp_path.rglob("*"))


def test_bad_study_and_series_uids_are_refused(settings: Settings, ingestor: Ingestor) -> None:
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        for value in ("1.2/../3", None):
            ds = ct_dataset(**{keyword: value})
            status, comment = call_store(store_event(ds), ingestor, scp.KnownAEs(settings))
            assert status == scp.ERROR_CANNOT_UNDERSTAND, (keyword, value, hex(status))
            assert comment
    assert spool_entries(ingestor) == []


def test_sop_instance_uid_differing_from_request_is_refused(settings: Settings, ingestor: Ingestor) -> None:
    ds = ct_dataset()
    status, comment = call_store(store_event(ds, sop_instance_uid=generate_uid()), ingestor,
                                 scp.KnownAEs(settings))

    assert status == scp.ERROR_CANNOT_UNDERSTAND
    assert comment
    assert spool_entries(ingestor) == []


def test_unknown_calling_ae_is_not_authorized(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data", dicom_require_known_ae=True)
    upgrade(settings)
    add_node(settings, "KNOWN1", "127.0.0.1", 104, ["store"])
    ingestor = Ingestor("gateway-test", settings)
    try:
        known_aes = scp.KnownAEs(settings)
        status, comment = call_store(store_event(ct_dataset(), calling="STRANGER"), ingestor, known_aes)
        assert status == scp.REFUSED_NOT_AUTHORIZED
        assert "STRANGER" in comment
        assert spool_entries(ingestor) == []

        status, comment = call_store(store_event(ct_dataset(), calling="KNOWN1"), ingestor, known_aes)
        assert (status, comment) == (scp.SUCCESS, "")
        assert len(list(ingestor.folder.files())) == 1
    finally:
        ingestor.close()
        dispose_engines()


def test_known_aes_stand_while_the_database_cannot_be_read(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data", dicom_require_known_ae=True)
    upgrade(settings)
    add_node(settings, "KNOWN1", "127.0.0.1", 104, ["store"])
    unreadable = load_settings(data_dir=tmp_path / "data", database_url=f"sqlite:///{tmp_path}/gone/pacs.db")
    try:
        known_aes = scp.KnownAEs(settings, ttl=0)
        assert known_aes.accepts("KNOWN1") and not known_aes.accepts("STRANGER")
        known_aes.settings = unreadable
        assert known_aes.accepts("KNOWN1") and not known_aes.accepts("STRANGER"), "the last list stands"
        never_read = scp.KnownAEs(unreadable, ttl=0)
        never_read.required = True
        with pytest.raises(SQLAlchemyError):  # the acceptor then rejects as transient
            never_read.accepts("KNOWN1")
    finally:
        dispose_engines()


def test_unknown_calling_ae_is_fine_when_not_required(settings: Settings, ingestor: Ingestor) -> None:
    status, _ = call_store(store_event(ct_dataset(), calling="STRANGER"), ingestor, scp.KnownAEs(settings))
    assert status == scp.SUCCESS


def _register_spooled(ingestor: Ingestor, settings: Settings) -> None:
    """Register what the ingestor queued, as dbserver would."""
    with ingestor._cv:  # noqa: SLF001 - the queued headers are what the forwarder would send
        metas = [p.meta for p in ingestor._new]  # noqa: SLF001
    register_instances(metas, settings)


@pytest.mark.parametrize("policy", ["keep-first", "overwrite", "reject"])
def test_identical_resend_is_success_and_spools_nothing_new(tmp_path: Path, policy: str) -> None:
    """An identical re-send is "already stored": Success, and the spool holds
    one object as before (content-named, so at most the same file again)."""
    settings = load_settings(data_dir=tmp_path / "data", duplicate_policy=policy)
    upgrade(settings)
    ingestor = Ingestor("gateway-test", settings)
    try:
        known_aes = scp.KnownAEs(settings)
        ds = ct_dataset()
        assert call_store(store_event(ds), ingestor, known_aes) == (scp.SUCCESS, "")
        _register_spooled(ingestor, settings)
        first = spool_entries(ingestor)

        assert call_store(store_event(ds), ingestor, known_aes) == (scp.SUCCESS, "")
        assert spool_entries(ingestor) == first
    finally:
        ingestor.close()
        dispose_engines()


def test_different_object_under_known_uid_rejected_by_policy(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data", duplicate_policy="reject")
    upgrade(settings)
    ingestor = Ingestor("gateway-test", settings)
    try:
        known_aes = scp.KnownAEs(settings)
        first = ct_dataset()
        assert call_store(store_event(first), ingestor, known_aes) == (scp.SUCCESS, "")
        _register_spooled(ingestor, settings)

        second = ct_dataset(SOPInstanceUID=first.SOPInstanceUID, StudyInstanceUID=first.StudyInstanceUID,
                            SeriesInstanceUID=first.SeriesInstanceUID, ImageComments="second object")
        status, comment = call_store(store_event(second), ingestor, known_aes)

        assert status == scp.DUPLICATE_SOP_INSTANCE
        assert comment and len(comment) <= 64
    finally:
        ingestor.close()
        dispose_engines()
