"""The HL7 outbox under an administrator's hands, in-process on SQLite and
PostgreSQL: ``retry`` sends a waiting message before its backoff ends (and
queues a cancelled one again), ``cancel`` stops one for good, both audited;
a report queued before its domain had a destination is addressed as the
domain is when it goes."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta

import hl7
import pytest
from sqlalchemy import select, update

from dbserver.domains import add_domain
from dbserver.models import AuditEvent, Hl7Outbox, utcnow
from dbserver.registration import register_instances
from dbserver.reports import OutboxError, add_report, cancel_outbox, list_outbox, list_reports, retry_outbox
from gateway.outbox import deliver_due
from services.db import unit_of_work
from services.settings import Settings
from tests.cluster import free_port
from tests.dbserver.test_registration import item
from tests.ris import MllpReceiver

STUDY = "1.2.826.0.1.3680043.8.498.7001"


def _report(settings: Settings, text: str) -> str:
    return add_report(settings, STUDY, text, "DOC^DORA", actor="test")["message_control_id"]


def _states(settings: Settings) -> dict[str, str]:
    return {m["message_control_id"]: m["state"] for m in list_outbox(settings)}


def _audit(settings: Settings, action: str) -> list[dict]:
    with unit_of_work(settings) as session:
        return [json.loads(e.detail) | {"uid": e.resource_uid, "actor": e.actor}
                for e in session.scalars(select(AuditEvent).where(AuditEvent.action == action))]


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    settings = make_settings(hl7_send_timeout_seconds=2.0)
    register_instances([item(STUDY, STUDY + ".1", STUDY + ".1.1", accession_number="OB-1",
                             issuer_of_patient_id="HOSP_O")], settings)
    return settings


def test_retry_sends_before_the_backoff_and_cancel_stops_for_good(settings: Settings) -> None:
    port = free_port()
    first, second = _report(settings, "IMPRESSION: normal."), _report(settings, "ADDENDUM: none.")
    # queued before the domain had a destination: nothing can be sent yet
    assert deliver_due(settings) == 0
    assert all("no RIS domain" in m["last_error"] for m in list_outbox(settings))
    add_domain(settings, "HOSP_O", facility="HOSP_O", report_host="127.0.0.1", report_port=port,
               application="RIS_O")
    with unit_of_work(settings) as session:  # deep in its backoff, as after a night of the RIS down
        session.execute(update(Hl7Outbox).values(next_attempt_at=utcnow() + timedelta(hours=1)))

    receiver = MllpReceiver(port).start()
    try:
        assert deliver_due(settings) == 0  # backing off, RIS or not
        with pytest.raises(LookupError, match="no outbox message NOPE"):
            retry_outbox(settings, ["NOPE"])
        assert cancel_outbox(settings, second, "sent to the RIS by fax", actor="admin") == second
        assert retry_outbox(settings, [], actor="admin") == [first]  # --all: every waiting one
        assert deliver_due(settings) == 1
        assert receiver.control_ids() == [first]
        oru = hl7.parse(receiver.received[0])
        assert (str(oru.segment("MSH")[5]), str(oru.segment("MSH")[6])) == ("RIS_O", "HOSP_O")
        assert _states(settings) == {first: "sent", second: "cancelled"}
        assert [r["delivery"] for r in list_reports(settings, STUDY)] == ["sent", "cancelled"]

        with pytest.raises(OutboxError, match="was delivered"):
            cancel_outbox(settings, first, "too late")
        with pytest.raises(OutboxError, match="was delivered"):
            retry_outbox(settings, [first])
        with pytest.raises(OutboxError, match="say why"):
            cancel_outbox(settings, second, "  ")
        assert deliver_due(settings) == 0 and receiver.control_ids() == [first], "a cancelled message stays"

        row_id = str(next(m["id"] for m in list_outbox(settings) if m["message_control_id"] == second))
        assert retry_outbox(settings, [row_id], actor="admin") == [second]  # by its outbox id
        assert deliver_due(settings) == 1
        assert receiver.control_ids() == [first, second]
    finally:
        receiver.stop()
    [cancelled] = _audit(settings, "hl7-outbox-cancel")
    assert (cancelled["uid"], cancelled["actor"], cancelled["reason"]) == (second, "admin", "sent to the RIS by fax")
    assert [(e["uid"], e["was"]) for e in _audit(settings, "hl7-outbox-retry")] == [
        (first, "waiting"), (second, "cancelled")]
