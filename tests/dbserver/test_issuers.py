"""Issuers in validation and registration, on a fresh database (SQLite, and
the real PostgreSQL): an accession number that two RIS domains both use
matches only the order of the issuer the images name, and is never guessed
when they name none; images without an Issuer of Patient ID take their
node's or the configured default, and so find the RIS patient (merged and
changed identifiers included); adding a domain for a facility that has
already sent messages adopts what is stored under the facility's name."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from sqlalchemy import select

from dbserver.domains import add_domain
from dbserver.models import AuditEvent, Order, Patient, PatientPriorId, Study
from dbserver.queries import add_node
from dbserver.registration import register_instances
from dbserver.validation import AmbiguousAccession, record_decision
from dbserver.worklist import OrderFields, create_order
from services.db import unit_of_work
from services.settings import Settings
from tests.dbserver.test_registration import item, studies


def _order(s: Settings, accession: str, issuer: str, pid: str, name: str, patient_issuer: str | None = None) -> None:
    create_order(s, OrderFields(accession_number=accession, issuer_of_accession_number=issuer, patient_id=pid,
                                issuer_of_patient_id=issuer if patient_issuer is None else patient_issuer,
                                patient_name=name, patient_birth_date="19700101", patient_sex="F"))


def _study(n: int, **extra: object) -> dict:
    return item(f"1.2.9.{n}", f"1.2.9.{n}.1", f"1.2.9.{n}.1.1", **extra)


def _state(s: Settings, uid: str) -> tuple[str, dict, str]:
    """validation status, detail, and the accession issuer of the order it was matched to"""
    with unit_of_work(s) as session:
        study = session.scalar(select(Study).where(Study.study_instance_uid == uid))
        order = session.get(Order, study.order_fk) if study.order_fk else None
        return study.validation_status, json.loads(study.validation_detail), \
            order.issuer_of_accession_number if order else ""


def test_the_issuers_the_images_name_choose_the_order(make_settings: Callable[..., Settings]) -> None:
    s = make_settings()
    _order(s, "ACC1", "HOSP_A", "PA", "DOE^JANE")
    _order(s, "ACC1", "HOSP_B", "PB", "DOE^JANE")
    _order(s, "ONLY", "HOSP_B", "PB", "DOE^JANE")
    register_instances([
        _study(1, patient_id="PB", accession_number="ACC1", issuer_of_accession_number="HOSP_B"),
        _study(2, patient_id="PA", accession_number="ACC1", issuer_of_accession_number="HOSP_C"),
        _study(3, patient_id="PA", accession_number="ACC1", issuer_of_patient_id="HOSP_A"),
        _study(4, patient_id="PB", accession_number="ACC1"),
        _study(5, patient_id="PB", accession_number="ONLY"),
    ], s)
    assert _state(s, "1.2.9.1")[0::2] == ("verified", "HOSP_B"), "the accession issuer the images name"
    assert _state(s, "1.2.9.2")[0::2] == ("unverified", ""), "no order of that issuer: never another's"
    assert _state(s, "1.2.9.3")[0::2] == ("verified", "HOSP_A"), "the domain of the images' Issuer of Patient ID"
    status, detail, matched = _state(s, "1.2.9.4")
    assert (status, matched) == ("quarantined", ""), "two candidates and no issuer: an administrator decides"
    assert detail["ambiguous_issuers"] == ["HOSP_A", "HOSP_B"] and "ambiguous" in detail["reason"]
    assert _state(s, "1.2.9.5")[0::2] == ("verified", "HOSP_B"), "the only order with that accession number"


def test_an_ambiguous_reconcile_names_the_issuers_and_changes_nothing(make_settings: Callable[..., Settings]) -> None:
    s = make_settings()
    _order(s, "ACC1", "HOSP_A", "PA", "DOE^JANE")
    _order(s, "ACC1", "HOSP_B", "PB", "DOE^JANE")
    register_instances([_study(1, patient_id="PX", accession_number="ACC1")], s)
    with pytest.raises(AmbiguousAccession, match="HOSP_A, HOSP_B"):
        record_decision(s, "1.2.9.1", "reconcile", "cli:test", "typo", "ACC1")
    with pytest.raises(LookupError, match="of issuer HOSP_C"):
        record_decision(s, "1.2.9.1", "reconcile", "cli:test", "typo", "ACC1", "HOSP_C")
    assert _state(s, "1.2.9.1")[0] == "quarantined"
    result = record_decision(s, "1.2.9.1", "reconcile", "cli:test", "typo", "ACC1", "HOSP_B")
    assert (result["validation_status"], result["issuer_of_accession_number"]) == ("reconciled", "HOSP_B")
    assert _state(s, "1.2.9.1")[2] == "HOSP_B"
    with unit_of_work(s) as session:
        audits = session.execute(select(AuditEvent.outcome, AuditEvent.detail)
                                 .where(AuditEvent.action == "quarantine-reconcile").order_by(AuditEvent.id)).all()
    assert [o for o, _ in audits] == ["failure", "failure", "success"]
    assert "ambiguous" in json.loads(audits[0][1])["error"]


def test_images_without_issuer_take_their_node_or_the_default(make_settings: Callable[..., Settings]) -> None:
    s = make_settings(default_issuer_of_patient_id="HOSP_A")
    add_node(s, "CT_B", "10.0.0.2", 104, ["store"], issuer="HOSP_B")
    with pytest.raises(ValueError, match="issuer"):
        add_node(s, "CT_X", "10.0.0.3", 104, ["store"], issuer="A^B")
    _order(s, "ACC1", "HOSP_A", "PM1", "MERGE^MARY")
    with unit_of_work(s) as session:  # ADT^A40 merged PM2 into PM1 (the RIS's identifiers)
        survivor = session.scalar(select(Patient).where(Patient.patient_id == "PM1"))
        session.add(PatientPriorId(patient_fk=survivor.id, patient_id="PM2", issuer_of_patient_id="HOSP_A",
                                   event="A40"))
        survivor_id = survivor.id
    register_instances([
        _study(1, patient_id="PM2", accession_number="", calling_ae_title="CT_A"),
        _study(2, patient_id="PM1", accession_number="ACC1", patient_name="MERGE^MARY", calling_ae_title="CT_A"),
        _study(3, patient_id="PM1", accession_number="", calling_ae_title="CT_B"),
        _study(4, patient_id="PM1", accession_number="", issuer_of_patient_id="OTHER", calling_ae_title="CT_B"),
    ], s)
    found = studies(s)
    assert found["1.2.9.1"].patient_fk == survivor_id, "a merged identifier finds the surviving patient"
    assert found["1.2.9.2"].patient_fk == survivor_id and _state(s, "1.2.9.2")[0] == "verified"
    with unit_of_work(s) as session:
        issuer = {uid: session.get(Patient, study.patient_fk).issuer_of_patient_id for uid, study in found.items()}
    assert issuer["1.2.9.3"] == "HOSP_B", "the node's issuer before the default"
    assert issuer["1.2.9.4"] == "OTHER", "an issuer the images name is kept"


def test_a_new_domain_adopts_what_its_facility_sent(make_settings: Callable[..., Settings]) -> None:
    s = make_settings()
    _order(s, "ACC1", "FAC", "P1", "DOE^JANE")  # stored under the facility's name: no domain named it yet
    _order(s, "ACC2", "FAC", "P2", "ROE^RITA")
    with unit_of_work(s) as session:
        p2 = session.scalar(select(Patient).where(Patient.patient_id == "P2"))
        session.add(PatientPriorId(patient_fk=p2.id, patient_id="P0", issuer_of_patient_id="FAC", event="A47"))
    domain = add_domain(s, "HOSP_A", facility="FAC")
    assert domain["adopted"] == {"patients": 2, "orders": 2, "prior_ids": 1, "outbox": 0}
    with unit_of_work(s) as session:
        assert set(session.scalars(select(Patient.issuer_of_patient_id))) == {"HOSP_A"}
        assert set(session.scalars(select(Order.issuer_of_accession_number))) == {"HOSP_A"}
        assert set(session.scalars(select(PatientPriorId.issuer_of_patient_id))) == {"HOSP_A"}
        assert session.scalar(select(AuditEvent.detail).where(AuditEvent.action == "ris-domain-adopt"))

    # rows that would collide: refused, nothing changed
    _order(s, "ACC1", "FAC2", "P1", "DOE^JANE")
    _order(s, "ACC9", "FAC2", "P9", "NEW^NINA")
    with pytest.raises(ValueError, match="Patient IDs P1; accession numbers ACC1"):
        add_domain(s, "HOSP_A", facility="FAC2")
    with unit_of_work(s) as session:
        assert session.scalar(select(Patient.issuer_of_patient_id).where(Patient.patient_id == "P9")) == "FAC2"
        assert session.scalar(select(AuditEvent.id).where(AuditEvent.detail.contains("FAC2"))) is None
    assert add_domain(s, "HOSP_C", facility="FAC2", adopt=False)["adopted"] == {}
