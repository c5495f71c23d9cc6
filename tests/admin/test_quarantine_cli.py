"""``pacs quarantine`` and ``pacs ris domain`` as an administrator runs them,
against a real PostgreSQL (the cluster's database; no service needs to run
for these commands): decisions with ``--json``, an ambiguous accession
number refused with the candidate issuers, failures audited, the listing by
state with what each study's own images carry, purge refused before it
asks, and a pending study's attempts in ``pacs study show``."""

from __future__ import annotations

import json

from sqlalchemy import select, update

from dbserver.models import Study
from dbserver.registration import register_instances
from services.db import unit_of_work
from services.settings import Settings
from tests.cluster import Cluster
from tests.dbserver.test_issuers import _order, _study


def _audits(c: Cluster, action: str) -> list[tuple[str, dict]]:
    return [(outcome, json.loads(detail)) for outcome, detail in c.sql(
        "SELECT outcome, detail FROM audit_events WHERE action = ? ORDER BY id", action)]


def test_decisions_issuers_json_and_failures(db: tuple[Cluster, Settings]) -> None:
    c, s = db
    _order(s, "ACC1", "HOSP_A", "PA", "DOE^JANE")
    _order(s, "ACC1", "HOSP_B", "PB", "DOE^JANE")
    register_instances([_study(1, patient_id="PX", accession_number="ACC1"),
                        _study(2, patient_id="PX", accession_number="ACC1", patient_name="OTHER^OLGA"),
                        _study(3, patient_id="PX", accession_number="ACC1")], s)

    ambiguous = c.pacs("quarantine", "reconcile", "1.2.9.1", "--accession", "ACC1", check=False)
    assert ambiguous.returncode == 2 and "HOSP_A, HOSP_B" in ambiguous.stderr and "--issuer" in ambiguous.stderr
    unknown = c.pacs("quarantine", "reconcile", "1.2.9.1", "--accession", "NOPE", check=False)
    assert unknown.returncode == 2 and "no order with accession number NOPE" in unknown.stderr
    assert [(o, d["accession"]) for o, d in _audits(c, "quarantine-reconcile")] == [
        ("failure", "ACC1"), ("failure", "NOPE")]

    done = c.pacs_json("quarantine", "reconcile", "1.2.9.1", "--accession", "ACC1", "--issuer", "HOSP_B")
    assert (done["validation_status"], done["issuer_of_accession_number"]) == ("reconciled", "HOSP_B")
    assert c.pacs_json("quarantine", "reject", "1.2.9.2", "--reason", "wrong patient")["validation_status"] \
        == "rejected"
    assert c.pacs_json("quarantine", "accept", "1.2.9.3", "--reason", "checked")["decision"]["reason"] == "checked"

    # the listing by state; each row shows what that study's images carry, not the patient row's first ones
    assert c.pacs_json("quarantine", "list") == []
    [rejected] = c.pacs_json("quarantine", "list", "--state", "rejected")
    assert (rejected["study_instance_uid"], rejected["patient_name"]) == ("1.2.9.2", "OTHER^OLGA")
    assert "OTHER^OLGA" in c.pacs("quarantine", "list", "--state", "rejected").stdout
    assert {r["validation_status"] for r in c.pacs_json("quarantine", "list", "--state", "all")} == {
        "reconciled", "rejected", "accepted"}
    bad_state = c.pacs("quarantine", "list", "--state", "nonsense", check=False)
    assert bad_state.returncode == 2 and "unknown state" in bad_state.stderr

    # purge refuses a study that is not rejected before it asks, and says so in the audit log
    refused = c.pacs("quarantine", "purge", "1.2.9.3", "--reason", "test", check=False, input="y\n")
    assert refused.returncode == 2 and "only a rejected study" in refused.stderr
    assert "Delete study" not in refused.stdout, "refused before the question"
    assert c.pacs("study", "show", "1.2.9.3", "--json") is not None
    assert c.pacs_json("quarantine", "purge", "1.2.9.2", "--reason", "wrong patient", "--yes")["instances"] == 1
    assert [o for o, _ in _audits(c, "quarantine-purge")] == ["failure", "success"]


def test_quarantine_header_shows_this_studys_images(db: tuple[Cluster, Settings]) -> None:
    c, s = db
    _order(s, "ACC2", "HOSP_A", "PQ", "RIGHT^RITA")
    register_instances([_study(1, patient_id="PQ", patient_name="FIRST^FRED", accession_number=""),
                        _study(2, patient_id="PQ", patient_name="WRONG^RITA", accession_number="ACC2")], s)
    text = " ".join(c.pacs("quarantine", "list").stdout.split())
    assert "WRONG^RITA (PQ)" in text and "FIRST^FRED" not in text, text
    assert c.pacs_json("quarantine", "list")[0]["patient_name"] == "WRONG^RITA"
    shown = " ".join(c.pacs("quarantine", "show", "1.2.9.2").stdout.split())
    assert "images: WRONG^RITA (PQ)" in shown and "FIRST^FRED" not in shown, shown


def test_domain_json_and_pending_study_show(db: tuple[Cluster, Settings]) -> None:
    c, s = db
    _order(s, "ACC3", "FAC", "P1", "DOE^JANE")
    added = c.pacs_json("ris", "domain", "add", "HOSP_A", "--facility", "FAC")
    assert (added["issuer"], added["adopted"]["patients"], added["adopted"]["orders"]) == ("HOSP_A", 1, 1)
    _order(s, "ACC4", "FAC_B", "P4", "ROE^RITA")
    text = " ".join(c.pacs("ris", "domain", "add", "HOSP_B", "--facility", "FAC_B").stdout.split())
    assert "adopted from FAC_B: 1 patients, 1 orders" in text, text
    assert c.pacs_json("ris", "domain", "remove", "HOSP_B") == {"issuer": "HOSP_B", "removed": True}

    register_instances([_study(1, patient_id="PP", accession_number="ASK-1")], s)
    with unit_of_work(s) as session:  # what the RIS worklist round leaves on a study it could not ask about
        session.execute(update(Study).where(Study.study_instance_uid == "1.2.9.1").values(
            validation_status="pending", validation_detail=json.dumps(
                {"reason": "asking the RIS worklist RIS", "attempts": 3, "last_attempt": "2026-12-05T10:00:00",
                 "last_error": "connection refused"})))
        assert session.scalar(select(Study.validation_status)) == "pending"
    shown = " ".join(c.pacs("study", "show", "1.2.9.1").stdout.split())
    assert "validation: pending, 3 attempts" in shown and "last error: connection refused" in shown, shown
