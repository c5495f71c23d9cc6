"""New studies checked against the orders the RIS sent over HL7: verified
when they agree, quarantined (stored, hidden from the clinical list, listed
for administrators with what differs) when they do not, unverified when
there is no order. Real HL7 over MLLP, real C-STOREs with dcmtk."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path

import pydicom

from dbserver.models import Patient
from dbserver.validation import differences, normalize_name
from tests.cluster import Cluster
from tests.ris import adt, export_one, order, send, send_study


def test_verified_quarantined_and_unverified(cluster: Cluster, tmp_path: Path) -> None:
    order(cluster, "V-1", "PV1", "VALID^VERA", "19800101", "F")
    order(cluster, "V-2", "PV2", "OTHER^OTTO", "19700505", "M")
    good = send_study(cluster, tmp_path / "good", "V-1", "PV1", "Valid^Vera^^", "19800101", "F")
    bad = send_study(cluster, tmp_path / "bad", "V-2", "PV2", "OTHER^OTTO", "19710505", "M")
    none = send_study(cluster, tmp_path / "none", "", "PV3", "NOORDER^NINA", "19900101", "F")
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
    # but it does not leave undecided, unless forced (audited)
    refused = cluster.pacs("export", bad, "--out", str(tmp_path / "exp-bad"), check=False)
    assert refused.returncode == 1 and "quarantined" in refused.stderr and "--force" in refused.stderr
    assert not (tmp_path / "exp-bad").exists() or not list((tmp_path / "exp-bad").iterdir())
    cluster.pacs("export", bad, "--out", str(tmp_path / "exp-forced"), "--force")
    [forced] = (tmp_path / "exp-forced").iterdir()
    assert pydicom.dcmread(forced).PatientBirthDate == "19710505", "as received"
    assert [o for o, _ in cluster.sql("SELECT outcome, detail FROM audit_events WHERE action = 'export' "
                                      "AND resource_uid = ? ORDER BY id", bad)] == ["failure", "success"]
    assert '"forced": true' in cluster.sql("SELECT detail FROM audit_events WHERE action = 'export' "
                                           "AND outcome = 'success' AND resource_uid = ?", bad)[0][0]

    # images before their order: unverified, then checked when the order arrives
    early = send_study(cluster, tmp_path / "early", "V-4", "PV4", "EARLY^ERIN", "19850505", "F", seed=2)
    cluster.wait_indexed(4)
    assert {s["study_instance_uid"]: s for s in cluster.studies()}[early]["validation_status"] == "unverified"
    order(cluster, "V-4", "PV4", "EARLY^ERIN", "19850505", "F")
    assert {s["study_instance_uid"]: s for s in cluster.studies()}[early]["validation_status"] == "verified"


def test_name_normalization() -> None:
    assert normalize_name("Doe^John^^") == normalize_name("DOE^JOHN")
    assert normalize_name("O'Brien^Pat") == "OBRIEN^PAT"
    assert normalize_name("Yamada^Tarou=山田^太郎") == "YAMADA^TAROU"
    assert normalize_name("DOE^JOHN") != normalize_name("DOE^JANE")


def test_a_birth_year_from_the_ris_is_compared_on_what_it_says() -> None:
    ris = Patient(patient_id="P1", patient_name="DOE^JOHN", patient_birth_date="1980", patient_sex="M")
    same = {"patient_id": "P1", "patient_name": "DOE^JOHN", "patient_birth_date": "19800512", "patient_sex": "M"}
    assert differences(same, ris) == {}
    other = dict(same, patient_birth_date="19810512")
    assert differences(other, ris) == {"patient_birth_date": {"images": "19810512", "ris": "1980"}}
    ris.patient_birth_date = "198006"
    assert set(differences(same, ris)) == {"patient_birth_date"}


def test_reconcile_accept_reject_and_renames_reach_exports(pg_cluster: Cluster, tmp_path: Path) -> None:
    """On PostgreSQL and Redis, as docker-compose runs it."""
    cluster = pg_cluster
    order(cluster, "R-1", "PR1", "RIGHT^RITA", "19600101", "F")
    order(cluster, "R-2", "PR2", "OK^OLIVER", "19650202", "M")
    wrong = send_study(cluster, tmp_path / "wrong", "R-1", "PR1", "WRONG^RITA", "19600101", "F")
    fine = send_study(cluster, tmp_path / "fine", "R-2", "PR2", "OK^OLIVER", "19650202", "M")
    odd = send_study(cluster, tmp_path / "odd", "R-2", "PR9", "ODD^OTTO", "19650202", "M")
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

    ds = export_one(cluster, wrong, tmp_path / "exp-wrong")
    assert ds.PatientName == "RIGHT^RITA"
    original = ds.OriginalAttributesSequence[-1]
    assert original.ModifiedAttributesSequence[0].PatientName == "WRONG^RITA"
    assert original.ReasonForTheAttributeModification == "COERCE"

    send(cluster, adt("A08", "A08-PR2", "PR2", "OK^OLIVIA", "19650202", "F"))
    renamed = export_one(cluster, fine, tmp_path / "exp-fine")
    assert (renamed.PatientName, renamed.PatientSex) == ("OK^OLIVIA", "F")
    assert renamed.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0].PatientName == "OK^OLIVER"
    # the archived object itself is untouched: its copy still hashes to what was received
    stored = cluster.pacs_json("study", "show", fine)["series"][0]["instances"][0]
    cache = cluster.data_dir / "archive" / "cache"
    copy = cache / stored["copies"][0]["locator"]
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == stored["sha256"]
    assert pydicom.dcmread(copy).PatientName == "OK^OLIVER"

    actions = cluster.sql("SELECT action, detail FROM audit_events WHERE action IN "
                          "('quarantine-reconcile', 'quarantine-accept', 'quarantine-reject')")
    assert {a for a, _ in actions} == {"quarantine-reconcile", "quarantine-reject"}
    assert any("wrong patient scanned" in d for _, d in actions)

    # a rejected study, and only a rejected one, can be purged: index rows at once, objects by the archive
    odd_copy = cache / cluster.pacs_json("study", "show", odd)["series"][0]["instances"][0]["copies"][0]["locator"]
    assert odd_copy.is_file()
    refused = cluster.pacs("quarantine", "purge", fine, "--reason", "test", "--yes", check=False)
    assert refused.returncode == 2 and "only a rejected study" in refused.stderr
    assert cluster.pacs("quarantine", "purge", odd, "--reason", "wrong patient", check=False,
                        input="n\n").returncode != 0, "purge asks first"
    cluster.pacs("quarantine", "purge", odd, "--reason", "wrong patient, images not needed", "--yes")
    assert cluster.pacs("study", "show", odd, check=False).returncode == 1
    deadline = time.monotonic() + 30
    while odd_copy.exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not odd_copy.exists(), "the archive deletes a purged study's objects"
    assert copy.is_file() and cluster.status()["counts"]["instances"] == 2
    assert cluster.sql("SELECT count(*) FROM object_copies WHERE purge_requested_at IS NOT NULL") == [(0,)]
    assert cluster.sql("SELECT outcome FROM audit_events WHERE action = 'quarantine-purge' ORDER BY id") == [
        ("failure",), ("success",)], "the refused purge of a verified study is audited too"


def test_accept_keeps_the_study_as_received(cluster: Cluster, tmp_path: Path) -> None:
    order(cluster, "A-1", "PA1", "ACCEPT^ADA", "19550505", "F")
    uid = send_study(cluster, tmp_path / "acc", "A-1", "PA1", "ACCEPT^ADA", "19550506", "F")
    cluster.wait_indexed(1)
    no_reason = cluster.pacs("quarantine", "accept", uid, "--reason", " ", check=False)
    assert no_reason.returncode == 2 and "why" in no_reason.stderr
    cluster.pacs("quarantine", "accept", uid, "--reason", "birth date confirmed with the patient")
    assert {s["study_instance_uid"]: s["validation_status"] for s in cluster.studies()}[uid] == "accepted"
    exported = export_one(cluster, uid, tmp_path / "exp")
    assert exported.PatientBirthDate == "19550506" and "OriginalAttributesSequence" not in exported


def test_coerce_policy_takes_the_order_demographics(make_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    c = make_cluster(PACS_VALIDATION_POLICY="coerce").start()
    order(c, "C-1", "PC1", "COERCE^CORA", "19720707", "F")
    uid = send_study(c, tmp_path / "s", "C-1", "PC1", "COERSE^CORA", "19720708", "F")
    c.wait_indexed(1)
    listed = {s["study_instance_uid"]: s for s in c.studies()}
    assert listed[uid]["validation_status"] == "coerced", "coerced studies are in the clinical list"
    assert (listed[uid]["patient_name"], listed[uid]["patient_birth_date"]) == ("COERCE^CORA", "19720707")
    assert c.pacs_json("quarantine", "list") == []
    assert c.pacs_json("study", "show", uid)["validation_detail"]["differences"] == {
        "patient_name": {"images": "COERSE^CORA", "ris": "COERCE^CORA"},
        "patient_birth_date": {"images": "19720708", "ris": "19720707"}}
    ds = export_one(c, uid, tmp_path / "exp")
    assert (ds.PatientName, ds.PatientBirthDate) == ("COERCE^CORA", "19720707")
    replaced = ds.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0]
    assert (replaced.PatientName, replaced.PatientBirthDate) == ("COERSE^CORA", "19720708")
