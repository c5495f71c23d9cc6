"""Patient identity changes from the RIS reach studies already stored:
ADT^A40 merges move them to the surviving patient, ADT^A47 changes the
identifier; exports carry the new values with the old ones in the Original
Attributes Sequence; the archived files are never rewritten. Real HL7 over
MLLP, real C-STOREs with dcmtk."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

from tests.cluster import Cluster
from tests.ris import ack_code, adt, export_one, order, send, send_study


def _patients(c: Cluster) -> dict[str, dict]:
    return {p["patient_id"]: p for p in c.pacs_json("ris", "patients") if p["issuer_of_patient_id"] == "HOSP_A"}


def _study(c: Cluster, uid: str) -> dict:
    return c.pacs_json("study", "show", uid)


def test_merge_moves_stored_studies_and_reaches_exports(pg_cluster: Cluster, tmp_path: Path) -> None:
    """On PostgreSQL and Redis, as docker-compose runs it."""
    cluster = pg_cluster
    order(cluster, "MG-1", "PM1", "MERGE^MARY", "19700101", "F")
    first = send_study(cluster, tmp_path / "first", "MG-1", "PM1", "MERGE^MARY", "19700101", "F")
    cluster.wait_indexed(1)
    assert _study(cluster, first)["validation_status"] == "verified"
    assert ack_code(send(cluster, adt("A01", "MG-A01", "PM2", "MERGED^MARY^ANN", "19700101", "F"))) == "AA"

    ack = send(cluster, adt("A40", "MG-A40", "PM2", "MERGED^MARY^ANN", "19700101", "F", prior="PM1"))
    assert ack_code(ack) == "AA", str(ack)
    found = _patients(cluster)
    assert "PM1" not in found
    assert found["PM2"]["prior_ids"] == [{"patient_id": "PM1", "issuer_of_patient_id": "HOSP_A", "event": "A40"}]
    shown = _study(cluster, first)
    assert (shown["patient_id"], shown["patient_name"]) == ("PM2", "MERGED^MARY^ANN")
    assert {o["accession_number"]: o["patient_id"] for o in cluster.pacs_json("ris", "orders")}["MG-1"] == "PM2"

    ds = export_one(cluster, first, tmp_path / "exp")
    assert (ds.PatientID, ds.PatientName) == ("PM2", "MERGED^MARY^ANN")
    replaced = ds.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0]
    assert (replaced.PatientID, replaced.PatientName) == ("PM1", "MERGE^MARY")
    stored = shown["series"][0]["instances"][0]
    copy = cluster.data_dir / "archive" / "cache" / stored["copies"][0]["locator"]
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == stored["sha256"]

    # a later study still carrying the old identifier matches the surviving patient's order
    order(cluster, "MG-2", "PM2", "MERGED^MARY^ANN", "19700101", "F")
    later = send_study(cluster, tmp_path / "later", "MG-2", "PM1", "MERGED^MARY^ANN", "19700101", "F", seed=2)
    cluster.wait_indexed(2)
    assert _study(cluster, later)["validation_status"] == "verified"
    assert _study(cluster, later)["patient_id"] == "PM2"


def test_identifier_change_and_bad_identity_messages(cluster: Cluster, tmp_path: Path) -> None:
    order(cluster, "ID-1", "PX1", "CHANGE^CARL", "19600606", "M")
    uid = send_study(cluster, tmp_path / "s", "ID-1", "PX1", "CHANGE^CARL", "19600606", "M")
    cluster.wait_indexed(1)
    send(cluster, adt("A01", "ID-A01", "PX9", "OTHER^OLGA", "19610101", "F"))
    before = cluster.pacs_json("ris", "patients")

    bad = [
        (adt("A40", "BAD-1", "PX1", "CHANGE^CARL", prior="NOBODY"), "NOBODY"),
        (adt("A40", "BAD-2", "PX1", "CHANGE^CARL"), "MRG-1"),
        (adt("A40", "BAD-3", "PX1", "CHANGE^CARL", prior="PX1"), "itself"),
        (adt("A47", "BAD-4", "PX9", "CHANGE^CARL", prior="PX1"), "exists already"),
        (adt("A47", "BAD-5", "PX2", "CHANGE^CARL", prior="NOBODY"), "NOBODY"),
    ]
    for message, says in bad:
        ack = send(cluster, message)
        assert ack_code(ack) == "AE" and says in str(ack), str(ack)
        assert str(ack.segment("ERR"))
    assert cluster.pacs_json("ris", "patients") == before, "a refused message changes nothing"

    ack = send(cluster, adt("A47", "ID-A47", "PX2", "CHANGE^CARL", "19600606", "M", prior="PX1"))
    assert ack_code(ack) == "AA", str(ack)
    found = _patients(cluster)
    assert "PX1" not in found and found["PX2"]["prior_ids"][0]["patient_id"] == "PX1"
    assert _study(cluster, uid)["patient_id"] == "PX2"
    assert export_one(cluster, uid, tmp_path / "exp").PatientID == "PX2"
    log = {m["message_control_id"]: m["ack_code"] for m in cluster.pacs_json("ris", "log")}
    assert log["ID-A47"] == "AA" and log["BAD-1"] == "AE"


def test_merge_and_change_reach_patients_known_only_from_images(cluster: Cluster, tmp_path: Path) -> None:
    # images with no Issuer of Patient ID and no order: their patients are known from the images alone
    merged = send_study(cluster, tmp_path / "m", "", "IM9", "IMAGE^ONLY", "19500505", "M")
    changed = send_study(cluster, tmp_path / "c", "", "IM7", "IMAGE^SEVEN", "19500707", "F", seed=2)
    cluster.wait_indexed(2)
    assert {_study(cluster, u)["validation_status"] for u in (merged, changed)} == {"unverified"}
    assert {("IM9", ""), ("IM7", "")} <= {(p["patient_id"], p["issuer_of_patient_id"])
                                         for p in cluster.pacs_json("ris", "patients")}
    assert ack_code(send(cluster, adt("A01", "IM-A01", "IM1", "KNOWN^KARL", "19500505", "M"))) == "AA"

    ack = send(cluster, adt("A40", "IM-A40", "IM1", "KNOWN^KARL", "19500505", "M", prior="IM9"))
    assert ack_code(ack) == "AA", str(ack)
    shown = _study(cluster, merged)
    assert (shown["patient_id"], shown["patient_name"]) == ("IM1", "KNOWN^KARL")
    assert "IM9" not in {p["patient_id"] for p in cluster.pacs_json("ris", "patients")}
    ds = export_one(cluster, merged, tmp_path / "exp-m")
    assert (ds.PatientID, ds.PatientName) == ("IM1", "KNOWN^KARL")
    replaced = ds.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0]
    assert (replaced.PatientID, replaced.PatientName) == ("IM9", "IMAGE^ONLY")

    ack = send(cluster, adt("A47", "IM-A47", "IM8", "IMAGE^SEVEN", "19500707", "F", prior="IM7"))
    assert ack_code(ack) == "AA", str(ack)
    found = _patients(cluster)
    assert "IM8" in found, "the patient now belongs to the RIS domain that named it"
    assert found["IM8"]["prior_ids"] == [{"patient_id": "IM7", "issuer_of_patient_id": "", "event": "A47"}]
    assert export_one(cluster, changed, tmp_path / "exp-c").PatientID == "IM8"

    # images sent later with the identifiers the RIS retired find the patients that have them now
    late_merged = send_study(cluster, tmp_path / "lm", "", "IM9", "IMAGE^ONLY", "19500505", "M", seed=3)
    late_changed = send_study(cluster, tmp_path / "lc", "", "IM7", "IMAGE^SEVEN", "19500707", "F", seed=4)
    cluster.wait_indexed(4)
    assert _study(cluster, late_merged)["patient_id"] == "IM1"
    assert _study(cluster, late_changed)["patient_id"] == "IM8"
    assert not {"IM9", "IM7"} & {p["patient_id"] for p in cluster.pacs_json("ris", "patients")}
    assert export_one(cluster, late_merged, tmp_path / "exp-lm").PatientID == "IM1"


def test_images_without_issuer_join_the_ris_patient_through_the_default(
        make_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    c = make_cluster(PACS_DEFAULT_ISSUER_OF_PATIENT_ID="HOSP_A").start()
    assert ack_code(send(c, adt("A01", "DI-A01", "MRN2", "TWO^TINA", "19800808", "F"))) == "AA"
    # an image-only study (no issuer, no accession) of a patient the RIS knows: the domain's patient
    early = send_study(c, tmp_path / "e", "", "MRN2", "TWO^TINA", "19800808", "F")
    c.wait_indexed(1)
    assert ack_code(send(c, adt("A01", "DI-A01b", "MRN1", "ONE^TINA", "19800808", "F"))) == "AA"
    ack = send(c, adt("A40", "DI-A40", "MRN1", "ONE^TINA", "19800808", "F", prior="MRN2"))
    assert ack_code(ack) == "AA", str(ack)
    assert _study(c, early)["patient_id"] == "MRN1", "the merge moved the study stored before it"
    # a later study still carrying the merged identifier, no issuer, no accession: the surviving patient
    later = send_study(c, tmp_path / "l", "", "MRN2", "TWO^TINA", "19800808", "F", seed=2)
    c.wait_indexed(2)
    assert _study(c, later)["patient_id"] == "MRN1"
    assert "MRN2" not in {p["patient_id"] for p in c.pacs_json("ris", "patients")}
