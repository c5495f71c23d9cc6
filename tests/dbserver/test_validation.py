"""New studies checked against the orders the RIS sent over HL7: verified
when they agree, quarantined (stored, hidden from the clinical list, listed
for administrators with what differs) when they do not, unverified when
there is no order. Real HL7 over MLLP, real C-STOREs with dcmtk."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import hl7
import pydicom
from hl7.client import MLLPClient

from dbserver.validation import normalize_name
from tests.cluster import Cluster
from tests.dicomdata import ct_dataset, write_part10


def _orm(accession: str, pid: str, name: str, birth: str, sex: str) -> str:
    obr = ["OBR", "1", f"PL-{accession}", f"FI-{accession}", "CT^CT chest"] + [""] * 13 + [accession]
    return "\r".join([
        f"MSH|^~\\&|RIS|HOSP_A|PACS|RAD|20261123120000||ORM^O01|{accession}|P|2.5",
        f"PID|1||{pid}||{name}||{birth}|{sex}", f"ORC|NW|PL-{accession}|FI-{accession}||||^^^202611241030",
        "|".join(obr)]) + "\r"


def _order(c: Cluster, *args: str) -> None:
    with MLLPClient("127.0.0.1", c.hl7_port) as client:
        ack = hl7.parse(client.send_message(_orm(*args)).decode().strip("\x0b\x1c\r"))
    assert str(ack.segment("MSA")[1]) == "AA"


def _send_study(c: Cluster, folder: Path, accession: str, pid: str, name: str, birth: str, sex: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    ds = ct_dataset(pid, name, seed=1, AccessionNumber=accession, PatientBirthDate=birth, PatientSex=sex)
    write_part10(folder / "1.dcm", ds)
    c.storescu(folder / "1.dcm")
    return str(ds.StudyInstanceUID)


def test_verified_quarantined_and_unverified(cluster: Cluster, tmp_path: Path) -> None:
    _order(cluster, "V-1", "PV1", "VALID^VERA", "19800101", "F")
    _order(cluster, "V-2", "PV2", "OTHER^OTTO", "19700505", "M")
    good = _send_study(cluster, tmp_path / "good", "V-1", "PV1", "Valid^Vera^^", "19800101", "F")
    bad = _send_study(cluster, tmp_path / "bad", "V-2", "PV2", "OTHER^OTTO", "19710505", "M")
    none = _send_study(cluster, tmp_path / "none", "", "PV3", "NOORDER^NINA", "19900101", "F")
    cluster.wait_indexed(3)

    clinical = {s["study_instance_uid"]: s for s in cluster.studies()}
    assert clinical[good]["validation_status"] == "verified"
    assert clinical[none]["validation_status"] == "unverified"
    assert bad not in clinical, "a quarantined study is hidden from the clinical list"

    quarantined = cluster.pacs_json("quarantine", "list")
    assert [q["study_instance_uid"] for q in quarantined] == [bad]
    assert quarantined[0]["validation_detail"]["differences"] == {
        "patient_birth_date": {"images": "19710505", "ris": "19700505"}}
    assert "RIS '19700505'" in " ".join(cluster.pacs("quarantine", "list").stdout.split())
    shown = cluster.pacs_json("quarantine", "show", bad)
    assert shown["validation_status"] == "quarantined" and shown["num_instances"] == 1
    assert shown["validation_detail"]["accession_number"] == "V-2"
    shown_text = " ".join(cluster.pacs("quarantine", "show", bad).stdout.split())
    assert "patient_birth_date: images '19710505', RIS '19700505'" in shown_text
    assert cluster.pacs("quarantine", "show", "1.2.3.999", check=False).returncode == 1
    # stored all the same: its instance is indexed and archived
    assert cluster.status()["counts"]["instances"] == 3


def test_name_normalization() -> None:
    assert normalize_name("Doe^John^^") == normalize_name("DOE^JOHN")
    assert normalize_name("O'Brien^Pat") == "OBRIEN^PAT"
    assert normalize_name("Yamada^Tarou=山田^太郎") == "YAMADA^TAROU"
    assert normalize_name("DOE^JOHN") != normalize_name("DOE^JANE")


def _adt_a08(pid: str, name: str, birth: str, sex: str) -> str:
    return "\r".join([
        f"MSH|^~\\&|RIS|HOSP_A|PACS|RAD|20261123120000||ADT^A08|A08-{pid}|P|2.5",
        "EVN|A08|20261123120000", f"PID|1||{pid}||{name}||{birth}|{sex}"]) + "\r"


def _export_one(c: Cluster, uid: str, out: Path) -> pydicom.Dataset:
    c.pacs("export", uid, "--out", str(out))
    files = list(out.iterdir())
    assert len(files) == 1
    return pydicom.dcmread(files[0])


def test_reconcile_accept_reject_and_renames_reach_exports(cluster: Cluster, tmp_path: Path) -> None:
    _order(cluster, "R-1", "PR1", "RIGHT^RITA", "19600101", "F")
    _order(cluster, "R-2", "PR2", "OK^OLIVER", "19650202", "M")
    wrong = _send_study(cluster, tmp_path / "wrong", "R-1", "PR1", "WRONG^RITA", "19600101", "F")
    fine = _send_study(cluster, tmp_path / "fine", "R-2", "PR2", "OK^OLIVER", "19650202", "M")
    odd = _send_study(cluster, tmp_path / "odd", "R-2", "PR9", "ODD^OTTO", "19650202", "M")
    cluster.wait_indexed(3)
    assert {q["study_instance_uid"] for q in cluster.pacs_json("quarantine", "list")} == {wrong, odd}

    refused = cluster.pacs("quarantine", "reconcile", fine, "--accession", "R-2", check=False)
    assert refused.returncode == 2 and "not quarantined" in refused.stderr

    cluster.pacs("quarantine", "reconcile", wrong, "--accession", "R-1", "--reason", "typo at the modality")
    cluster.pacs("quarantine", "reject", odd, "--reason", "wrong patient scanned")
    listed = {s["study_instance_uid"]: s["validation_status"] for s in cluster.studies()}
    assert listed[wrong] == "reconciled" and listed[fine] == "verified" and odd not in listed
    assert cluster.pacs_json("quarantine", "list") == []
    assert "typo at the modality" in " ".join(cluster.pacs("quarantine", "show", wrong).stdout.split())
    assert cluster.pacs_json("quarantine", "show", odd)["validation_detail"]["decision"]["status"] == "rejected"

    ds = _export_one(cluster, wrong, tmp_path / "exp-wrong")
    assert ds.PatientName == "RIGHT^RITA"
    original = ds.OriginalAttributesSequence[-1]
    assert original.ModifiedAttributesSequence[0].PatientName == "WRONG^RITA"
    assert original.ReasonForTheAttributeModification == "COERCE"

    with MLLPClient("127.0.0.1", cluster.hl7_port) as client:
        client.send_message(_adt_a08("PR2", "OK^OLIVIA", "19650202", "F"))
    renamed = _export_one(cluster, fine, tmp_path / "exp-fine")
    assert (renamed.PatientName, renamed.PatientSex) == ("OK^OLIVIA", "F")
    assert renamed.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0].PatientName == "OK^OLIVER"
    # the archived object itself is untouched: its copy still hashes to what was received
    stored = cluster.pacs_json("study", "show", fine)["series"][0]["instances"][0]
    copy = cluster.data_dir / "archive" / "cache" / stored["copies"][0]["locator"]
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == stored["sha256"]
    assert pydicom.dcmread(copy).PatientName == "OK^OLIVER"

    with sqlite3.connect(cluster.data_dir / "pacs.db") as db:
        actions = db.execute("SELECT action, detail FROM audit_events WHERE action IN "
                             "('quarantine-reconcile', 'quarantine-accept', 'quarantine-reject')").fetchall()
    assert {a for a, _ in actions} == {"quarantine-reconcile", "quarantine-reject"}
    assert any("wrong patient scanned" in d for _, d in actions)


def test_accept_keeps_the_study_as_received(cluster: Cluster, tmp_path: Path) -> None:
    _order(cluster, "A-1", "PA1", "ACCEPT^ADA", "19550505", "F")
    uid = _send_study(cluster, tmp_path / "acc", "A-1", "PA1", "ACCEPT^ADA", "19550506", "F")
    cluster.wait_indexed(1)
    no_reason = cluster.pacs("quarantine", "accept", uid, "--reason", " ", check=False)
    assert no_reason.returncode == 2 and "why" in no_reason.stderr
    cluster.pacs("quarantine", "accept", uid, "--reason", "birth date confirmed with the patient")
    assert {s["study_instance_uid"]: s["validation_status"] for s in cluster.studies()}[uid] == "accepted"
    exported = _export_one(cluster, uid, tmp_path / "exp")
    assert exported.PatientBirthDate == "19550506" and "OriginalAttributesSequence" not in exported
