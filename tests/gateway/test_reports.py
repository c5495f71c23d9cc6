"""Reports back to the RIS: ``pacs report add`` queues an ORU^R01 that the
gateway delivers over real MLLP to the RIS of the study's domain, retried
while the RIS is down or refuses it, kept across a restart of every
service, and delivered exactly once."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import hl7

from dbserver.models import Order, Study
from dbserver.reports import ndl, procedure_ce
from tests.cluster import Cluster, free_port, wait_until
from tests.ris import MllpReceiver, ack_code, order, orm, send, send_study


def _outbox(c: Cluster) -> list[dict]:
    return c.pacs_json("hl7", "outbox")


def test_report_waits_for_the_ris_survives_a_restart_and_arrives_once(
        make_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    ris_port = free_port()
    c = make_cluster("postgres", PACS_HL7_RETRY_MAX_SECONDS="1").start()  # as docker-compose runs it
    c.pacs("ris", "domain", "add", "HOSP_A", "--facility", "HOSP_A", "--report-host", "127.0.0.1",
           "--report-port", str(ris_port), "--application", "RIS")
    placed = orm("RP-1", "NW", "RP-1", pid="PR1", name="REPORT^RUTH", birth="19750505", sex="F")
    ack = send(c, placed.replace("|CTCHEST^CT chest|", "|CTHEAD^CT Head^L|"))  # OBR-4 code^text^scheme
    assert ack_code(ack) == "AA", str(ack)
    uid = send_study(c, tmp_path / "s", "RP-1", "PR1", "REPORT^RUTH", "19750505", "F")
    c.wait_indexed(1)
    text = tmp_path / "report.txt"
    # a blank line between paragraphs, and the newline (or two) editors leave at the end
    text.write_text("FINDINGS: No acute abnormality.\n\nIMPRESSION: Normal | chest ^ CT.\n\n")
    added = c.pacs("report", "add", uid, "--file", str(text), "--author", "HOUSE^GREGORY^^DR")
    assert "queued (127.0.0.1:" in " ".join(added.stdout.split())
    assert c.pacs_json("study", "show", uid)["reading_status"] == "reported"

    # the RIS is down: the report waits, attempts counted, the error shown
    wait_until(lambda: (_outbox(c)[0]["attempts"] >= 2) and _outbox(c)[0]["last_error"])
    waiting = _outbox(c)[0]
    assert waiting["state"] == "waiting" and "refused" in waiting["last_error"].lower()
    control_id = waiting["message_control_id"]

    c.stop()
    c.start()
    assert _outbox(c)[0]["state"] == "waiting", "the outbox survives a restart"

    receiver = MllpReceiver(ris_port).start()
    try:
        wait_until(lambda: _outbox(c)[0]["state"] == "sent")
        time.sleep(3)  # a few more sender rounds: nothing is sent again
        assert receiver.control_ids() == [control_id]
        oru = hl7.parse(receiver.received[0])
        assert str(oru.segment("MSH")[9]) == "ORU^R01^ORU_R01"
        assert str(oru.segment("MSH")[5]) == "RIS" and str(oru.segment("MSH")[6]) == "HOSP_A"
        assert str(oru.segment("PID")[3][0][0]) == "PR1" and str(oru.segment("PID")[5]) == "REPORT^RUTH"
        obr = oru.segment("OBR")
        assert str(obr[18]) == "RP-1" and str(obr[25]) == "F"
        # OBR-4 is the order's CE, code and coding scheme included
        assert [str(oru.extract_field("OBR", 1, 4, 1, n, 1)) for n in (1, 2, 3)] == ["CTHEAD", "CT Head", "L"]
        # OBR-32 is an NDL: its first component a CNN, ID&family&given&middle&suffix&prefix
        assert str(obr[32]) == "&HOUSE&GREGORY&&&DR"
        assert [str(oru.extract_field("OBR", 1, 32, 1, 1, n)) for n in (2, 3, 6)] == ["HOUSE", "GREGORY", "DR"]
        obx = oru.segments("OBX")
        assert str(obx[0][5]) == uid
        # one OBX per line; the blank line inside is kept, those at the end are not
        assert [oru.unescape(str(s[5])) for s in obx[1:]] == [
            "FINDINGS: No acute abnormality.", "", "IMPRESSION: Normal | chest ^ CT."]
        assert [str(s[1]) for s in obx] == ["1", "2", "3", "4"]
        log = [m for m in c.pacs_json("ris", "log") if m["direction"] == "out"]
        assert log[0]["message_control_id"] == control_id and log[0]["ack_code"] == "AA"

        # a RIS that answers AE gets the same message again until it answers AA
        receiver.code = "AE"
        text.write_text("ADDENDUM: none.")
        queued = c.pacs_json("report", "add", uid, "--file", str(text), "--author", "DOC^DORA")
        assert queued["study_instance_uid"] == uid and queued["destination"] == f"127.0.0.1:{ris_port}"
        wait_until(lambda: len(receiver.received) >= 3)
        second = [m for m in _outbox(c) if m["message_control_id"] != control_id][0]
        assert second["message_control_id"] == queued["message_control_id"]
        assert second["state"] == "waiting" and "AE" in second["last_error"]
        receiver.code = "AA"
        # an administrator who knows the RIS is fixed sends it now rather than after the backoff
        # (the backoff here is 1 s: the sender may have been first, and then nothing is waiting)
        retried = c.pacs_json("hl7", "retry", "--all")["retried"]
        assert retried == [queued["message_control_id"]] or [
            m["state"] for m in _outbox(c) if m["message_control_id"] == queued["message_control_id"]] == ["sent"], retried
        wait_until(lambda: all(m["state"] == "sent" for m in _outbox(c)))
        ids = receiver.control_ids()
        assert ids.count(control_id) == 1 and set(ids) == {control_id, second["message_control_id"]}
        assert [r["sent_to_ris"] for r in c.pacs_json("report", "list", uid)] == [True, True]
    finally:
        receiver.stop()


def test_bad_reports_are_refused(cluster: Cluster, tmp_path: Path) -> None:
    order(cluster, "RQ-1", "PQ1", "RIGHT^ROSE", "19800808", "F")
    hidden = send_study(cluster, tmp_path / "q", "RQ-1", "PQ1", "WRONG^ROSE", "19800808", "F")
    cluster.wait_indexed(1)
    text = tmp_path / "r.txt"
    text.write_text("IMPRESSION: normal.")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    for args, code, says in [
        ((hidden, "--file", str(text), "--author", "DOC^DORA"), 2, "quarantined"),
        (("1.2.3.4.999", "--file", str(text), "--author", "DOC^DORA"), 1, "no study"),
        (("1.2.3/../4", "--file", str(text), "--author", "DOC^DORA"), 2, "UID"),
        ((hidden, "--file", str(empty), "--author", "DOC^DORA"), 2, "empty"),
    ]:
        res = cluster.pacs("report", "add", *args, check=False)
        assert res.returncode == code and says in res.stderr, (args, res.stderr)
    assert cluster.pacs_json("hl7", "outbox") == []
    for args, code, says in [
        (("retry",), 2, "--all"), (("retry", "7", "--all"), 2, "--all"),
        (("retry", "PACS0000"), 1, "no outbox message PACS0000"),
        (("cancel", "42", "--reason", "gone"), 1, "no outbox message 42"),
        (("cancel", "42"), 2, "--reason"),
    ]:
        res = cluster.pacs("hl7", *args, check=False)
        assert res.returncode == code and says in " ".join(res.stderr.split()), (args, res.stderr)
    assert "nothing is waiting" in cluster.pacs("hl7", "retry", "--all").stdout
    assert cluster.pacs_json("hl7", "retry", "--all") == {"retried": []}


def test_result_interpreter_and_procedure_are_escaped() -> None:
    """A delimiter inside a name part or the procedure text is an HL7 escape,
    never a new component or sub-component."""
    assert ndl("SMITH&WESSON^ANN^B^PROF^III") == "&SMITH\\T\\WESSON&ANN&B&III&PROF"
    assert ndl("DOC^DORA=ドク^ドラ") == "&DOC&DORA"  # alphabetic group only
    study = Study(study_description="CT | head")
    coded = Order(procedure_code_value="CT^1", requested_procedure_description="CT head & neck",
                  procedure_coding_scheme="L")
    assert procedure_ce(coded, study) == "CT\\S\\1^CT head \\T\\ neck^L"
    assert procedure_ce(Order(procedure_code_value="", requested_procedure_description="",
                              procedure_coding_scheme=""), study) == "^CT \\F\\ head"
    assert procedure_ce(None, study) == "^CT \\F\\ head"
