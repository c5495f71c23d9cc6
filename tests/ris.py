"""HIS/RIS helpers for the tests: HL7 messages as a RIS writes them, sent
over real MLLP (python-hl7's client), a studies-from-the-modality helper
(dcmtk storescu), and an MLLP receiver standing in for the RIS's report
interface."""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import hl7
import pydicom
from hl7.client import MLLPClient

from services.mllp import FrameReader, frame
from tests.cluster import Cluster
from tests.dicomdata import ct_dataset, write_part10

VT, FS, CR = b"\x0b", b"\x1c", b"\x0d"


def msh(kind: str, control: str, facility: str = "HOSP_A") -> str:
    return f"MSH|^~\\&|RIS|{facility}|PACS|RAD|20261123120000||{kind}|{control}|P|2.5"


def segment(name: str, fields: dict[int, str]) -> str:
    """A segment with these fields at their HL7 positions."""
    return "|".join([name] + [fields.get(i, "") for i in range(1, max(fields) + 1)])


def adt(event: str, control: str, pid: str, name: str, birth: str = "19700101", sex: str = "M",
        facility: str = "HOSP_A", authority: str = "", prior: str = "") -> str:
    """ADT^<event>; ``prior`` fills MRG-1 (A40 merge, A47 change)."""
    ident = f"{pid}^^^{authority}^MR" if authority else pid
    segments = [msh(f"ADT^{event}", control, facility), f"EVN|{event}|20261123120000",
                f"PID|1||{ident}||{name}||{birth}|{sex}"]
    if prior:
        segments.append(f"MRG|{prior}")
    return "\r".join(segments) + "\r"


def orm(control: str, order_control: str, accession: str, pid: str = "P100", name: str = "ORDER^OLGA",
        start: str = "202611241030", modality: str = "CT", station: str = "CT01", status: str = "",
        birth: str = "19800202", sex: str = "F", facility: str = "HOSP_A") -> str:
    """ORM^O01 as IHE Scheduled Workflow fills it (accession in OBR-18)."""
    return "\r".join([
        msh("ORM^O01", control, facility), f"PID|1||{pid}||{name}||{birth}|{sex}",
        f"ORC|{order_control}|PL-{accession}|FI-{accession}||{status}||^^^{start}",
        segment("OBR", {1: "1", 2: f"PL-{accession}", 3: f"FI-{accession}", 4: "CTCHEST^CT chest",
                        18: accession, 19: f"RP-{accession}", 20: f"SPS-{accession}", 21: station,
                        24: modality})]) + "\r"


def send(c: Cluster, message: str) -> hl7.Message:
    """Send one message to the cluster's HL7 port; the parsed ACK."""
    with MLLPClient("127.0.0.1", c.hl7_port) as client:
        reply = client.send_message(message)
    return hl7.parse(reply.decode().strip(VT.decode() + FS.decode() + CR.decode()))


def ack_code(ack: hl7.Message) -> str:
    return str(ack.segment("MSA")[1])


def order(c: Cluster, accession: str, pid: str, name: str, birth: str, sex: str) -> None:
    """Place an order (ORM^O01 NW) and check it was applied."""
    ack = send(c, orm(accession, "NW", accession, pid=pid, name=name, birth=birth, sex=sex))
    assert ack_code(ack) == "AA", str(ack)


def send_study(c: Cluster, folder: Path, accession: str, pid: str, name: str, birth: str, sex: str,
               seed: int = 1) -> str:
    """C-STORE one CT image with these demographics (dcmtk storescu); its Study Instance UID."""
    folder.mkdir(parents=True, exist_ok=True)
    ds = ct_dataset(pid, name, seed=seed, AccessionNumber=accession, PatientBirthDate=birth, PatientSex=sex)
    write_part10(folder / "1.dcm", ds)
    c.storescu(folder / "1.dcm")
    return str(ds.StudyInstanceUID)


def export_one(c: Cluster, uid: str, out: Path) -> pydicom.Dataset:
    """``pacs export`` of a one-instance study, read back."""
    c.pacs("export", uid, "--out", str(out))
    files = list(out.iterdir())
    assert len(files) == 1
    return pydicom.dcmread(files[0])


class MllpReceiver:
    """A RIS's result interface on a local port: answers every message with
    ACK ``code`` and keeps what it received, in order."""

    def __init__(self, port: int, code: str = "AA") -> None:
        self.port, self.code = port, code
        self.received: list[str] = []
        self._sock: socket.socket | None = None
        self._stop = threading.Event()

    def start(self) -> MllpReceiver:
        self._stop.clear()
        self._sock = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._sock.settimeout(0.2)
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()  # type: ignore[union-attr]
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(5)
                reader = FrameReader(1 << 24)
                try:
                    while True:
                        data = conn.recv(65536)
                        if not data:
                            break
                        for message in reader.feed(data):
                            text = message.decode()
                            self.received.append(text)
                            control = hl7.parse(text).segment("MSH")[10]
                            conn.sendall(frame(f"MSH|^~\\&|RIS|HOSP_A|PACS|PACS|20261201||ACK|A{control}|P|2.5\r"
                                               f"MSA|{self.code}|{control}\r"))
                except OSError:
                    pass

    def control_ids(self) -> list[str]:
        return [str(hl7.parse(m).segment("MSH")[10]) for m in self.received]
