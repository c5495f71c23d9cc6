"""New studies checked against the orders the RIS sent over HL7: verified
when they agree, quarantined (stored, hidden from the clinical list, listed
for administrators with what differs) when they do not, unverified when
there is no order. Real HL7 over MLLP, real C-STOREs with dcmtk."""

from __future__ import annotations

from pathlib import Path

import hl7
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
    assert "RIS '19700505'" in cluster.pacs("quarantine", "list").stdout
    # stored all the same: its instance is indexed and archived
    assert cluster.status()["counts"]["instances"] == 3


def test_name_normalization() -> None:
    assert normalize_name("Doe^John^^") == normalize_name("DOE^JOHN")
    assert normalize_name("O'Brien^Pat") == "OBRIEN^PAT"
    assert normalize_name("Yamada^Tarou=山田^太郎") == "YAMADA^TAROU"
    assert normalize_name("DOE^JOHN") != normalize_name("DOE^JANE")
