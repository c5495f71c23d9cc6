"""The Modality Worklist SCP against dcmtk's findscu -W, on a cluster under
``pacs up``: matching on patient name wildcards, scheduled date ranges,
modality, station AE title and issuer of accession number; return keys;
cancelled orders left out."""

from __future__ import annotations

import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pydicom
import pytest

from dbserver.worklist import CANCELLED, OrderFields, _time_range, _wildcard, create_order
from services.settings import load_settings
from tests.cluster import DCMTK, Cluster

TODAY = datetime.now(timezone.utc).replace(hour=9, minute=30, second=0, microsecond=0)


@pytest.fixture(scope="module")
def worklist_cluster(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    c = Cluster(tmp_path_factory.mktemp("worklist"))
    c.start()
    settings = load_settings(data_dir=c.data_dir)
    orders = [
        ("ACC-1", "P1", "DOE^JOHN", "CT", "CT01", TODAY, "scheduled"),
        ("ACC-2", "P2", "DOE^JANE", "MR", "MR01", TODAY + timedelta(days=1), "scheduled"),
        ("ACC-3", "P3", "SMITH^ANN", "CT", "CT01", TODAY + timedelta(days=3), "scheduled"),
        ("ACC-4", "P4", "DOE^JIM", "CT", "CT01", TODAY, CANCELLED),
        ("ACC-5", "P5", "MÜLLER^JÜRGEN", "US", "US01", TODAY.replace(hour=14), "scheduled"),
    ]
    uids = {}
    for acc, pid, name, modality, station, start, status in orders:
        uids[acc] = create_order(settings, OrderFields(
            accession_number=acc, patient_id=pid, patient_name=name, patient_birth_date="19700101",
            patient_sex="O", modality=modality, scheduled_station_ae_title=station, scheduled_start=start,
            requested_procedure_id=f"RP-{acc}", requested_procedure_description=f"{modality} exam",
            scheduled_procedure_step_id=f"SPS-{acc}", status=status, issuer_of_accession_number="HOSP_A"))
    # the same accession number from another RIS domain, scheduled alongside ACC-1
    uids["ACC-1@HOSP_B"] = create_order(settings, OrderFields(
        accession_number="ACC-1", issuer_of_accession_number="HOSP_B", patient_id="P1",
        issuer_of_patient_id="HOSP_B", patient_name="TWIN^TOM", modality="CT", scheduled_station_ae_title="CT01",
        scheduled_start=TODAY, requested_procedure_id="RP-B1", scheduled_procedure_step_id="SPS-B1"))
    uids["ACC-6"] = create_order(settings, OrderFields(
        accession_number="ACC-6", patient_id="P6", patient_name="CODE^CORA", modality="CT",
        scheduled_station_ae_title="CT02", scheduled_start=TODAY + timedelta(days=10),
        requested_procedure_description="CT chest with contrast", procedure_code_value="CTCHESTC",
        procedure_coding_scheme="99RIS"))
    c.order_uids = uids  # type: ignore[attr-defined]
    yield c
    c.destroy()


def findscu(c: Cluster, out: Path, *keys: str) -> list[pydicom.Dataset]:
    out.mkdir(parents=True, exist_ok=True)
    args = [str(DCMTK / "findscu"), "-W", "-aet", "MODALITY", "-aec", "PACS", "-X", "-od", str(out)]
    for key in ("PatientName", "PatientID", "AccessionNumber", "StudyInstanceUID",
                "ScheduledProcedureStepSequence[0].Modality",
                "ScheduledProcedureStepSequence[0].ScheduledStationAETitle",
                "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate",
                "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime",
                "ScheduledProcedureStepSequence[0].ScheduledProcedureStepID", "RequestedProcedureID",
                "PatientWeight"):
        if not any(k.startswith(key + "=") for k in keys):
            args += ["-k", key]
    for key in keys:
        args += ["-k", key]
    res = subprocess.run([*args, "127.0.0.1", str(c.dicom_port)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def accessions(items: list[pydicom.Dataset]) -> set[str]:
    return {str(ds.AccessionNumber) for ds in items}


def test_all_scheduled_orders_without_keys(worklist_cluster: Cluster, tmp_path: Path) -> None:
    items = findscu(worklist_cluster, tmp_path)
    assert accessions(items) == {"ACC-1", "ACC-2", "ACC-3", "ACC-5", "ACC-6"}  # ACC-4 is cancelled


def test_patient_name_wildcard(worklist_cluster: Cluster, tmp_path: Path) -> None:
    assert accessions(findscu(worklist_cluster, tmp_path, "PatientName=DOE^J*")) == {"ACC-1", "ACC-2"}
    assert accessions(findscu(worklist_cluster, tmp_path / "b", "PatientName=do?^JANE")) == {"ACC-2"}


def test_date_range_and_modality(worklist_cluster: Cluster, tmp_path: Path) -> None:
    today = TODAY.strftime("%Y%m%d")
    tomorrow = (TODAY + timedelta(days=1)).strftime("%Y%m%d")
    ranged = findscu(worklist_cluster, tmp_path,
                     f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate={today}-{tomorrow}")
    assert accessions(ranged) == {"ACC-1", "ACC-2", "ACC-5"}
    ct_today = findscu(worklist_cluster, tmp_path / "ct",
                       f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate={today}",
                       "ScheduledProcedureStepSequence[0].Modality=CT")
    assert accessions(ct_today) == {"ACC-1"}
    open_range = findscu(worklist_cluster, tmp_path / "open",
                         f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate={tomorrow}-")
    assert accessions(open_range) == {"ACC-2", "ACC-3", "ACC-6"}
    morning = findscu(worklist_cluster, tmp_path / "am",
                      f"ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartDate={today}",
                      "ScheduledProcedureStepSequence[0].ScheduledProcedureStepStartTime=-1200")
    assert accessions(morning) == {"ACC-1"}


def test_station_ae_and_return_keys(worklist_cluster: Cluster, tmp_path: Path) -> None:
    items = findscu(worklist_cluster, tmp_path, "ScheduledProcedureStepSequence[0].ScheduledStationAETitle=MR01")
    assert accessions(items) == {"ACC-2"}
    ds = items[0]
    assert ds.StudyInstanceUID == worklist_cluster.order_uids["ACC-2"]  # type: ignore[attr-defined]
    assert ds.PatientName == "DOE^JANE" and ds.PatientID == "P2" and ds.RequestedProcedureID == "RP-ACC-2"
    sps = ds.ScheduledProcedureStepSequence[0]
    assert sps.Modality == "MR" and sps.ScheduledStationAETitle == "MR01"
    assert sps.ScheduledProcedureStepStartDate == (TODAY + timedelta(days=1)).strftime("%Y%m%d")
    assert sps.ScheduledProcedureStepID == "SPS-ACC-2"
    assert "PatientWeight" in ds and ds.PatientWeight in (None, "")  # asked for, not known: zero length


def test_procedure_codes_and_sequences_asked_for(worklist_cluster: Cluster, tmp_path: Path) -> None:
    """Modalities pick their protocol from the Requested Procedure and
    Scheduled Protocol Code Sequences; a sequence we keep nothing for comes
    back empty rather than missing."""
    items = findscu(worklist_cluster, tmp_path, "AccessionNumber=ACC-6", "RequestedProcedureCodeSequence",
                    "ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence[0].CodeValue",
                    "ReferencedStudySequence")
    [ds] = items
    [code] = ds.RequestedProcedureCodeSequence
    assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == (
        "CTCHESTC", "99RIS", "CT chest with contrast")
    [protocol] = ds.ScheduledProcedureStepSequence[0].ScheduledProtocolCodeSequence
    assert protocol.CodeValue == "CTCHESTC" and "CodeMeaning" not in protocol  # only what was asked
    assert "ReferencedStudySequence" in ds and len(ds.ReferencedStudySequence) == 0
    uncoded = findscu(worklist_cluster, tmp_path / "b", "AccessionNumber=ACC-1", "RequestedProcedureCodeSequence")
    assert len(uncoded[0].RequestedProcedureCodeSequence) == 0


def issuers(items: list[pydicom.Dataset]) -> set[tuple[str, str]]:
    return {(str(ds.AccessionNumber), "".join(str(i.LocalNamespaceEntityID)
                                              for i in ds.IssuerOfAccessionNumberSequence)) for ds in items}


def test_issuer_of_accession_number_returned_and_matched(worklist_cluster: Cluster, tmp_path: Path) -> None:
    """An accession number is unique only within its issuer: the worklist
    says whose it is, and a query naming an issuer gets that issuer's orders."""
    items = findscu(worklist_cluster, tmp_path, "AccessionNumber=ACC-1", "IssuerOfAccessionNumberSequence")
    assert issuers(items) == {("ACC-1", "HOSP_A"), ("ACC-1", "HOSP_B")}
    [item] = items[0].IssuerOfAccessionNumberSequence
    assert "UniversalEntityID" not in item and "UniversalEntityIDType" not in item  # not kept, not asked
    no_issuer = findscu(worklist_cluster, tmp_path / "none", "AccessionNumber=ACC-6",
                        "IssuerOfAccessionNumberSequence")
    assert issuers(no_issuer) == {("ACC-6", "")}  # the sequence is there, with no item

    hosp_b = findscu(worklist_cluster, tmp_path / "b", "AccessionNumber=ACC-1",
                     "IssuerOfAccessionNumberSequence[0].LocalNamespaceEntityID=HOSP_B",
                     "IssuerOfAccessionNumberSequence[0].UniversalEntityID",
                     "IssuerOfAccessionNumberSequence[0].UniversalEntityIDType")
    assert issuers(hosp_b) == {("ACC-1", "HOSP_B")}
    assert str(hosp_b[0].PatientName) == "TWIN^TOM"
    assert hosp_b[0].StudyInstanceUID == worklist_cluster.order_uids["ACC-1@HOSP_B"]  # type: ignore[attr-defined]
    [item] = hosp_b[0].IssuerOfAccessionNumberSequence
    assert item.UniversalEntityID in (None, "") and item.UniversalEntityIDType in (None, "")  # asked, unknown
    every_b = findscu(worklist_cluster, tmp_path / "all-b",
                      "IssuerOfAccessionNumberSequence[0].LocalNamespaceEntityID=HOSP_B")
    assert issuers(every_b) == {("ACC-1", "HOSP_B")}
    assert findscu(worklist_cluster, tmp_path / "c",
                   "IssuerOfAccessionNumberSequence[0].LocalNamespaceEntityID=HOSP_C") == []


def test_non_ascii_names_travel_as_utf8(worklist_cluster: Cluster, tmp_path: Path) -> None:
    items = findscu(worklist_cluster, tmp_path, "AccessionNumber=ACC-5")
    assert [str(ds.PatientName) for ds in items] == ["MÜLLER^JÜRGEN"]
    assert items[0].SpecificCharacterSet == "ISO_IR 192"


def test_matching_helpers() -> None:
    assert _wildcard("DOE*", "DOE^JOHN") and not _wildcard("DOE", "DOE^JOHN")
    assert _wildcard("d?e*", "DOE^X", ignore_case=True) and _wildcard("", "anything")
    assert _time_range("0800-1200") == ("080000", "120059")
    assert _time_range("-12") == ("000000", "125959")
    assert _time_range("0930") == ("093000", "093059")


def test_malformed_date_key_gets_a_failure_with_comment(worklist_cluster: Cluster) -> None:
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pynetdicom import AE
    from pynetdicom.sop_class import ModalityWorklistInformationFind

    ae = AE("MODALITY")
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", worklist_cluster.dicom_port, ae_title="PACS")
    query = Dataset()
    query.PatientName = ""
    sps = Dataset()
    sps.ScheduledProcedureStepStartDate = "2026XX01"
    query.ScheduledProcedureStepSequence = Sequence([sps])
    answers = list(assoc.send_c_find(query, ModalityWorklistInformationFind))
    assoc.release()
    status = answers[-1][0]
    assert status.Status == 0xC000
    assert "not a date" in status.ErrorComment
    assert len(answers) == 1


def test_ris_cli_lists_orders_and_patients(worklist_cluster: Cluster) -> None:
    orders = worklist_cluster.pacs_json("ris", "orders")
    assert {o["accession_number"] for o in orders} == {"ACC-1", "ACC-2", "ACC-3", "ACC-4", "ACC-5", "ACC-6"}
    assert {o["accession_number"] for o in worklist_cluster.pacs_json("ris", "orders", "--status", "cancelled")} \
        == {"ACC-4"}
    names = {p["patient_name"] for p in worklist_cluster.pacs_json("ris", "patients")}
    assert {"DOE^JOHN", "MÜLLER^JÜRGEN"} <= names
    table = worklist_cluster.pacs("ris", "orders").stdout
    assert "ACC-3" in table and "SMITH^ANN" in table
