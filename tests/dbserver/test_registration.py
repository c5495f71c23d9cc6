"""Registration of received instances on a fresh database (SQLite, and the
real PostgreSQL): batches, idempotent re-runs, study and series aggregates,
the duplicate policies and stable-study marking."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from dbserver.models import Change, Instance, Patient, PatientPriorId, Series, Study, SupersededObject
from dbserver.registration import mark_stable_studies, register_instances, registered
from services.db import unit_of_work
from services.settings import Settings

T0 = datetime(2026, 1, 5, 8, 0, tzinfo=timezone.utc)


def item(study: str, series: str, sop: str, *, content: str = "", modality: str = "CT", size: int = 1000,
         at: datetime = T0, **extra: object) -> dict:
    """A registration item as the gateway sends it."""
    sha = hashlib.sha256(f"{sop}/{content}".encode()).hexdigest()
    data = {"sop_instance_uid": sop, "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
            "study_instance_uid": study, "series_instance_uid": series,
            "transfer_syntax_uid": "1.2.840.10008.1.2.1", "patient_id": "P1", "issuer_of_patient_id": "",
            "patient_name": "DOE^JANE", "patient_birth_date": "19700101", "patient_sex": "F",
            "study_date": "20260105", "study_time": "080000", "accession_number": "ACC1", "modality": modality,
            "series_number": 1, "instance_number": int(sop.rsplit(".", 1)[1]), "sha256": sha,
            "size_bytes": size, "calling_ae_title": "CT1", "received_at": at.isoformat()}
    data.update(extra)
    return data


def studies(settings: Settings) -> dict[str, Study]:
    with unit_of_work(settings) as session:
        return {s.study_instance_uid: s for s in session.scalars(select(Study))}


def instance_sha(settings: Settings, sop: str) -> str | None:
    with unit_of_work(settings) as session:
        return session.scalar(select(Instance.sha256).where(Instance.sop_instance_uid == sop))


def superseded(settings: Settings) -> list[tuple[str, str, str]]:
    with unit_of_work(settings) as session:
        return sorted(tuple(row) for row in session.execute(select(
            SupersededObject.sop_instance_uid, SupersededObject.sha256, SupersededObject.reason)))


def batch() -> list[dict]:
    """Two studies of one patient: 2 series (CT, SR) + 1 series (MR)."""
    return [
        item("1.2.3.1", "1.2.3.1.1", "1.2.3.1.1.1", size=100),
        item("1.2.3.1", "1.2.3.1.1", "1.2.3.1.1.2", size=200),
        item("1.2.3.1", "1.2.3.1.2", "1.2.3.1.2.1", modality="SR", size=50, series_number=2),
        item("1.2.3.2", "1.2.3.2.1", "1.2.3.2.1.1", modality="MR", size=400, accession_number="ACC2"),
        item("1.2.3.2", "1.2.3.2.1", "1.2.3.2.1.2", modality="MR", size=500, accession_number="ACC2"),
    ]


def test_batch_registration_and_aggregates(make_settings: Callable[..., Settings]) -> None:
    s = make_settings()
    assert register_instances(batch(), s) == {"new": 5, "existing": 0, "superseded": 0}
    found = studies(s)
    assert set(found) == {"1.2.3.1", "1.2.3.2"}
    ct, mr = found["1.2.3.1"], found["1.2.3.2"]
    assert (ct.number_of_study_related_series, ct.number_of_study_related_instances, ct.size_bytes) == (2, 3, 350)
    assert ct.modalities_in_study.split("\\") == ["CT", "SR"]
    assert (mr.number_of_study_related_series, mr.number_of_study_related_instances, mr.size_bytes) == (1, 2, 900)
    assert mr.modalities_in_study == "MR" and mr.accession_number == "ACC2"
    assert ct.patient_fk == mr.patient_fk, "one patient: same Patient ID and issuer"
    with unit_of_work(s) as session:
        series = {x.series_instance_uid: x.number_of_series_related_instances for x in session.scalars(select(Series))}
        changes = session.execute(select(Change.change_type, Change.resource_uid)).all()
    assert series == {"1.2.3.1.1": 2, "1.2.3.1.2": 1, "1.2.3.2.1": 2}
    kinds = sorted(c for c, _ in changes)
    assert kinds.count("new-instance") == 5 and kinds.count("new-study") == 2 and kinds.count("new-series") == 3
    assert registered([i["sha256"] for i in batch()] + ["f" * 64], s) == {i["sha256"] for i in batch()}


def test_retired_patient_ids_find_the_patient_that_has_them_now(make_settings: Callable[..., Settings]) -> None:
    s = make_settings()

    def patient(pid: str, issuer: str) -> Patient:
        row = Patient(patient_id=pid, issuer_of_patient_id=issuer, patient_name=pid, created_at=T0, updated_at=T0)
        session.add(row)
        session.flush()
        return row

    with unit_of_work(s) as session:
        survivor, later, again = patient("PS", "RIS"), patient("PL", "RIS"), patient("P3", "")
        for pid, issuer, owner, at in [("P1", "", survivor, T0), ("P2", "RIS", survivor, T0),
                                       ("P2", "RIS", later, T0 + timedelta(days=1)), ("P3", "", survivor, T0)]:
            session.add(PatientPriorId(patient_fk=owner.id, patient_id=pid, issuer_of_patient_id=issuer,
                                       event="A40", replaced_at=at))
        ids = {"PS": survivor.id, "PL": later.id, "P3": again.id}
    register_instances([item("1.2.3.1", "1.2.3.1.1", "1.2.3.1.1.1", patient_id="P1"),
                        item("1.2.3.2", "1.2.3.2.1", "1.2.3.2.1.1", patient_id="P2", issuer_of_patient_id="RIS"),
                        item("1.2.3.3", "1.2.3.3.1", "1.2.3.3.1.1", patient_id="P3"),
                        item("1.2.3.4", "1.2.3.4.1", "1.2.3.4.1.1", patient_id="P4")], s)
    found = studies(s)
    assert found["1.2.3.1"].patient_fk == ids["PS"], "merged away: the survivor"
    assert found["1.2.3.2"].patient_fk == ids["PL"], "the latest merge counts"
    assert found["1.2.3.3"].patient_fk == ids["P3"], "a patient holding the identifier again keeps it"
    with unit_of_work(s) as session:
        new = session.scalar(select(Patient).where(Patient.id == found["1.2.3.4"].patient_fk))
        assert (new.patient_id, new.patient_name) == ("P4", "DOE^JANE")
        assert session.scalar(select(func.count()).select_from(Patient)) == 4


def test_rerun_is_idempotent(make_settings: Callable[..., Settings]) -> None:
    s = make_settings()
    register_instances(batch(), s)
    before = {uid: (x.number_of_study_related_series, x.number_of_study_related_instances, x.size_bytes,
                    x.last_received_at) for uid, x in studies(s).items()}
    with unit_of_work(s) as session:
        n_changes = len(session.scalars(select(Change.seq)).all())
    assert register_instances(batch(), s) == {"new": 0, "existing": 5, "superseded": 0}
    assert register_instances(batch() + batch(), s)["new"] == 0, "repeats inside a batch too"
    after = {uid: (x.number_of_study_related_series, x.number_of_study_related_instances, x.size_bytes,
                   x.last_received_at) for uid, x in studies(s).items()}
    assert after == before
    assert superseded(s) == []
    with unit_of_work(s) as session:
        assert len(session.scalars(select(Change.seq)).all()) == n_changes


def test_instances_added_later_update_the_aggregates(make_settings: Callable[..., Settings]) -> None:
    s = make_settings()
    register_instances(batch()[:2], s)
    register_instances(batch()[2:], s)
    ct = studies(s)["1.2.3.1"]
    assert (ct.number_of_study_related_series, ct.number_of_study_related_instances, ct.size_bytes) == (2, 3, 350)
    assert ct.modalities_in_study == "CT\\SR"


def test_items_with_bad_uids_are_dropped(make_settings: Callable[..., Settings]) -> None:
    s = make_settings()
    good = item("1.2.3.9", "1.2.3.9.1", "1.2.3.9.1.1")
    bad = [item("1.2.3.9", "1.2.3.9.1", "1.2.3.9.1.2", study_instance_uid="../../etc"),
           item("1.2.3.9", "1.2.3.9.1", "1.2.3.9.1.3", series_instance_uid="1.2.x")]
    assert register_instances([good, *bad], s)["new"] == 1
    assert studies(s)["1.2.3.9"].number_of_study_related_instances == 1


@pytest.mark.parametrize(("policy", "winner", "reason"), [
    ("keep-first", "first", "duplicate-kept-first"),
    ("overwrite", "second", "overwritten"),
    ("reject", "first", "duplicate-rejected"),
])
def test_duplicate_policies(make_settings: Callable[..., Settings], policy: str, winner: str, reason: str) -> None:
    s = make_settings(duplicate_policy=policy)
    first = item("1.2.3.5", "1.2.3.5.1", "1.2.3.5.1.1", content="first", size=100, at=T0)
    second = item("1.2.3.5", "1.2.3.5.1", "1.2.3.5.1.1", content="second", size=300,
                  at=T0 + timedelta(minutes=5), calling_ae_title="CT2")
    assert register_instances([first], s)["new"] == 1
    assert register_instances([second], s) == {"new": 0, "existing": 0, "superseded": 1}
    kept, lost = (first, second) if winner == "first" else (second, first)
    assert instance_sha(s, "1.2.3.5.1.1") == kept["sha256"]
    assert superseded(s) == [("1.2.3.5.1.1", lost["sha256"], reason)]
    study = studies(s)["1.2.3.5"]
    assert study.number_of_study_related_instances == 1
    assert study.size_bytes == kept["size_bytes"]
    # both objects are known: neither is left in a spool as undelivered
    assert registered([first["sha256"], second["sha256"]], s) == {first["sha256"], second["sha256"]}
    # re-sending either again changes nothing
    assert register_instances([first, second], s)["superseded"] == 0
    assert instance_sha(s, "1.2.3.5.1.1") == kept["sha256"]
    assert len(superseded(s)) == 1


@pytest.mark.parametrize("policy", ["keep-first", "overwrite"])
def test_duplicates_inside_one_batch(make_settings: Callable[..., Settings], policy: str) -> None:
    s = make_settings(duplicate_policy=policy)
    early = item("1.2.3.6", "1.2.3.6.1", "1.2.3.6.1.1", content="early", at=T0)
    late = item("1.2.3.6", "1.2.3.6.1", "1.2.3.6.1.1", content="late", at=T0 + timedelta(seconds=1))
    counts = register_instances([late, early], s)  # order in the batch does not matter, time does
    assert counts == {"new": 1, "existing": 0, "superseded": 1}
    kept, lost = (early, late) if policy == "keep-first" else (late, early)
    assert instance_sha(s, "1.2.3.6.1.1") == kept["sha256"]
    assert [sha for _, sha, _ in superseded(s)] == [lost["sha256"]]


def test_mark_stable_studies(make_settings: Callable[..., Settings]) -> None:
    waiting = make_settings(study_stable_seconds=3600)
    register_instances(batch()[:3], waiting)
    assert mark_stable_studies(waiting) == []
    assert studies(waiting)["1.2.3.1"].stable is False

    quick = make_settings(study_stable_seconds=0)
    register_instances(batch()[3:], quick)  # the second study, due at once
    assert mark_stable_studies(quick) == ["1.2.3.2"]
    assert mark_stable_studies(quick) == [], "marked once"
    found = studies(quick)
    assert found["1.2.3.2"].stable is True and found["1.2.3.1"].stable is False
    with unit_of_work(quick) as session:
        assert session.scalars(select(Change.resource_uid).where(Change.change_type == "stable-study")).all() == [
            "1.2.3.2"]

    # a new instance re-opens a stable study; an identical re-send does not
    register_instances(batch()[3:], waiting)
    assert studies(waiting)["1.2.3.2"].stable is True
    register_instances([item("1.2.3.2", "1.2.3.2.1", "1.2.3.2.1.3", modality="MR")], waiting)
    reopened = studies(waiting)["1.2.3.2"]
    assert reopened.stable is False and reopened.number_of_study_related_instances == 3
    assert mark_stable_studies(waiting) == []
