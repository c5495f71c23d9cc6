"""Validation against an external RIS by Modality Worklist C-FIND: dcmtk's
wlmscpfs serves a worklist folder; studies sent with dcmtk storescu are
validated against it, stay ``pending`` while it is down, and are validated
once it is back."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind

from tests.cluster import DCMTK, Cluster, free_port, wait_until
from tests.ris import send_study

RIS_AE = "RISMWL"


def worklist_item(folder: Path, accession: str, pid: str, name: str, birth: str, sex: str) -> None:
    """One scheduled procedure step as a wlmscpfs data file (every type 1
    attribute present, or wlmscpfs ignores the file)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.AccessionNumber, ds.PatientID, ds.PatientName = accession, pid, name
    ds.PatientBirthDate, ds.PatientSex = birth, sex
    ds.StudyInstanceUID = generate_uid()
    ds.RequestedProcedureID, ds.RequestedProcedureDescription = f"RP-{accession}", "CT chest"
    ds.ReferringPhysicianName, ds.RequestedProcedurePriority = "REF^ROB", "ROUTINE"
    sps = Dataset()
    sps.ScheduledStationAETitle, sps.ScheduledStationName = "CT01", "CT ROOM 1"
    sps.ScheduledProcedureStepStartDate, sps.ScheduledProcedureStepStartTime = "20261201", "0930"
    sps.Modality, sps.ScheduledPerformingPhysicianName = "CT", "PERF^PAT"
    sps.ScheduledProcedureStepDescription, sps.ScheduledProcedureStepID = "CT chest", f"SPS-{accession}"
    ds.ScheduledProcedureStepSequence = Sequence([sps])
    ds.save_as(folder / RIS_AE / f"{accession}.wl", implicit_vr=False, little_endian=True)


class Wlmscpfs:
    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        (root / RIS_AE).mkdir(parents=True, exist_ok=True)
        (root / RIS_AE / "lockfile").touch()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([str(DCMTK / "wlmscpfs"), "-dfp", str(self.root), str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if subprocess.run([str(DCMTK / "echoscu"), "-aec", RIS_AE, "127.0.0.1", str(self.port)],
                              capture_output=True).returncode == 0:
                return
            time.sleep(0.2)
        raise TimeoutError("wlmscpfs did not come up")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def ris(tmp_path: Path) -> Iterator[Wlmscpfs]:
    server = Wlmscpfs(tmp_path / "worklists")
    yield server
    server.stop()


def statuses(c: Cluster) -> dict[str, str]:
    found = {s["study_instance_uid"]: s["validation_status"] for s in c.studies()}
    found.update({s["study_instance_uid"]: s["validation_status"] for s in c.pacs_json("quarantine", "list")})
    return found


def test_validation_by_worklist_query_and_pending_while_the_ris_is_down(
        make_cluster: Callable[..., Cluster], ris: Wlmscpfs, tmp_path: Path) -> None:
    worklist_item(ris.root, "W-1", "PW1", "WORK^LISA", "19800101", "F")
    worklist_item(ris.root, "W-2", "PW2", "WRONG^WALT", "19700202", "M")
    worklist_item(ris.root, "W-3", "PW3", "LATE^LARA", "19900303", "F")
    ris.start()
    c = make_cluster(PACS_RIS_MWL_AE=RIS_AE, PACS_RIS_MWL_HOST="127.0.0.1", PACS_RIS_MWL_PORT=str(ris.port),
                     PACS_RIS_RETRY_SECONDS="1").start()

    good = send_study(c, tmp_path / "good", "W-1", "PW1", "Work^Lisa", "19800101", "F")
    bad = send_study(c, tmp_path / "bad", "W-2", "PW2", "WRONG^WALT", "19700203", "M", seed=2)
    unknown = send_study(c, tmp_path / "unknown", "W-404", "PW4", "NOBODY^NED", "19500101", "M", seed=3)
    wait_until(lambda: statuses(c) == {good: "verified", bad: "quarantined", unknown: "unverified"})
    why = c.pacs_json("quarantine", "show", bad)["validation_detail"]["differences"]
    assert why == {"patient_birth_date": {"images": "19700203", "ris": "19700202"}}
    orders = {o["accession_number"]: o for o in c.pacs_json("ris", "orders")}
    assert orders["W-1"]["source"] == "mwl" and orders["W-1"]["issuer_of_patient_id"] == RIS_AE
    assert orders["W-1"]["scheduled_start"].startswith("2026-12-01T09:30")

    # orders of the external RIS are its own worklist's, not served again by ours
    ae = AE("CT01")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", c.dicom_port, ae_title="PACS")
    query = Dataset()
    query.AccessionNumber = "W-*"
    answers = [ds for status, ds in assoc.send_c_find(query, ModalityWorklistInformationFind)
               if status and status.Status == 0xFF00]
    assoc.release()
    assert answers == []

    ris.stop()
    late = send_study(c, tmp_path / "late", "W-3", "PW3", "LATE^LARA", "19900303", "F", seed=4)
    wait_until(lambda: c.pacs_json("study", "show", late)["validation_detail"].get("attempts", 0) >= 2)
    shown = c.pacs_json("study", "show", late)
    assert shown["validation_status"] == "pending"
    assert RIS_AE in shown["validation_detail"]["last_error"]

    ris.start()
    wait_until(lambda: statuses(c).get(late) == "verified")
    assert statuses(c)[good] == "verified"
