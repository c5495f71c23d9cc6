"""The HL7 listener over real MLLP connections (python-hl7's client and raw
sockets) to a cluster under ``pacs up``: ACKs, patients and orders applied,
errors answered AE/AR without applying anything, framing edge cases."""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from collections.abc import Iterator

import hl7
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE
from pynetdicom.sop_class import ModalityWorklistInformationFind

from gateway.hl7 import FrameReader, respond
from services.settings import load_settings
from tests.cluster import Cluster, need_backends
from tests.ris import CR, FS, VT, ack_code, adt, export_one, msh, order, orm, send, send_study


@pytest.fixture(scope="module")
def ris_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """On PostgreSQL and Redis, as docker-compose runs it."""
    need_backends()
    c = Cluster(tmp_path_factory.mktemp("hl7"), "postgres")
    c.start()
    yield c
    c.destroy()


def patients(c: Cluster) -> dict[tuple[str, str], dict]:
    return {(p["patient_id"], p["issuer_of_patient_id"]): p for p in c.pacs_json("ris", "patients", "--limit", "0")}


def orders(c: Cluster) -> dict[str, dict]:
    return {o["accession_number"]: o for o in c.pacs_json("ris", "orders", "--limit", "0")}


def log_rows(c: Cluster) -> list[tuple[str, str, str]]:
    return c.sql("SELECT message_control_id, message_type, ack_code FROM hl7_messages")


def worklist(c: Cluster, calling: str, keys: dict[str, str], step: dict[str, str]) -> list[Dataset]:
    """The answers of a Modality Worklist C-FIND (pynetdicom) with these
    top-level and Scheduled Procedure Step keys."""
    ae = AE(calling)
    ae.add_requested_context(ModalityWorklistInformationFind)
    assoc = ae.associate("127.0.0.1", c.dicom_port, ae_title="PACS")
    query = Dataset()
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    sps = Dataset()
    for keyword, value in step.items():
        setattr(sps, keyword, value)
    query.ScheduledProcedureStepSequence = Sequence([sps])
    try:
        return [ds for status, ds in assoc.send_c_find(query, ModalityWorklistInformationFind)
                if status.Status == 0xFF00]
    finally:
        assoc.release()


def test_adt_creates_then_updates_a_patient(ris_cluster: Cluster) -> None:
    ack = send(ris_cluster, adt("A04", "ADT-1", "P1", "DOE^JOHN"))
    assert ack_code(ack) == "AA" and str(ack.segment("MSA")[2]) == "ADT-1"
    assert patients(ris_cluster)[("P1", "HOSP_A")]["patient_name"] == "DOE^JOHN"
    assert ack_code(send(ris_cluster, adt("A08", "ADT-2", "P1", "DOE^JONATHAN"))) == "AA"
    assert patients(ris_cluster)[("P1", "HOSP_A")]["patient_name"] == "DOE^JONATHAN"
    assert ack_code(send(ris_cluster, adt("A31", "ADT-3", "P1", "DOE^JONATHAN", birth="19700102", sex="O"))) == "AA"
    assert ack_code(send(ris_cluster, adt("A01", "ADT-4", "P2", "ROE^RITA", sex="F"))) == "AA"
    found = patients(ris_cluster)
    assert (found[("P1", "HOSP_A")]["patient_birth_date"], found[("P1", "HOSP_A")]["patient_sex"]) == ("19700102", "O")
    assert found[("P2", "HOSP_A")]["patient_name"] == "ROE^RITA"
    assert {("ADT-2", "ADT^A08", "AA"), ("ADT-3", "ADT^A31", "AA"), ("ADT-4", "ADT^A01", "AA")} <= set(log_rows(ris_cluster))


def test_same_patient_id_in_two_domains_is_two_patients(ris_cluster: Cluster) -> None:
    send(ris_cluster, adt("A01", "DOM-1", "P7", "ALPHA^ANN", facility="HOSP_A"))
    send(ris_cluster, adt("A01", "DOM-2", "P7", "BETA^BOB", facility="HOSP_B"))
    send(ris_cluster, adt("A01", "DOM-3", "P7", "GAMMA^GUS", facility="HOSP_B", authority="CITY"))
    found = patients(ris_cluster)
    assert found[("P7", "HOSP_A")]["patient_name"] == "ALPHA^ANN"
    assert found[("P7", "HOSP_B")]["patient_name"] == "BETA^BOB"
    assert found[("P7", "CITY")]["patient_name"] == "GAMMA^GUS"


def test_a_domain_gives_its_facility_an_assigning_authority(ris_cluster: Cluster) -> None:
    ris_cluster.pacs("ris", "domain", "add", "CITY_MRN", "--facility", "HOSP_C")
    assert ack_code(send(ris_cluster, adt("A04", "DOM-C1", "P8", "CITY^CARA", facility="HOSP_C"))) == "AA"
    assert ack_code(send(ris_cluster, adt("A04", "DOM-C2", "P8", "OTHER^OLE", facility="HOSP_D"))) == "AA"
    found = patients(ris_cluster)
    assert found[("P8", "CITY_MRN")]["patient_name"] == "CITY^CARA"
    assert found[("P8", "HOSP_D")]["patient_name"] == "OTHER^OLE"
    assert ("P8", "HOSP_C") not in found
    taken = ris_cluster.pacs("ris", "domain", "add", "OTHER", "--facility", "HOSP_C", check=False)
    assert taken.returncode == 2 and "another domain" in taken.stderr
    domains = {d["issuer"]: d for d in ris_cluster.pacs_json("ris", "domain", "list")}
    assert domains["CITY_MRN"]["sending_facility"] == "HOSP_C"


def test_orders_new_change_cancel_and_worklist(ris_cluster: Cluster) -> None:
    assert ack_code(send(ris_cluster, orm("ORM-1", "NW", "A100"))) == "AA"
    assert ack_code(send(ris_cluster, orm("ORM-2", "NW", "A101", modality="MR", station="MR01"))) == "AA"
    assert ack_code(send(ris_cluster, orm("ORM-3", "XO", "A101", modality="MR", station="MR02"))) == "AA"
    got = orders(ris_cluster)
    assert got["A100"]["status"] == "scheduled" and got["A100"]["modality"] == "CT"
    assert got["A100"]["scheduled_start"].startswith("2026-11-24T10:30")
    assert got["A101"]["scheduled_station_ae_title"] == "MR02"
    assert ack_code(send(ris_cluster, orm("ORM-4", "CA", "A100", modality="", station="", start=""))) == "AA"
    cancelled = orders(ris_cluster)["A100"]
    assert cancelled["status"] == "cancelled"
    # a cancel says nothing about the rest of the order
    assert (cancelled["modality"], cancelled["scheduled_station_ae_title"]) == ("CT", "CT01")
    assert cancelled["scheduled_start"].startswith("2026-11-24T10:30")

    answers = worklist(ris_cluster, "MR02", {"PatientName": "", "AccessionNumber": ""},
                       {"ScheduledStationAETitle": "MR02"})
    assert [(ds.AccessionNumber, str(ds.PatientName)) for ds in answers] == [("A101", "ORDER^OLGA")]


def test_omi_with_ipc_and_status_change(ris_cluster: Cluster) -> None:
    omi = "\r".join([
        msh("OMI^O23", "OMI-1"), "PID|1||P200||OMI^OSCAR||19900303|M",
        "ORC|NW|PL-9|FI-9", "TQ1|1||||||202611250800",
        "OBR|1|PL-9|FI-9|MRBRAIN^MR brain^99RIS",
        "IPC|A200|RP-200|1.2.826.0.1.3680043.8.498.99|SPS-200|MR||MR ROOM 2||MR02"]) + "\r"
    assert ack_code(send(ris_cluster, omi)) == "AA"
    order = orders(ris_cluster)["A200"]
    assert order["study_instance_uid"] == "1.2.826.0.1.3680043.8.498.99"
    assert order["scheduled_station_ae_title"] == "MR02" and order["requested_procedure_id"] == "RP-200"
    assert (order["procedure_code_value"], order["procedure_coding_scheme"],
            order["requested_procedure_description"]) == ("MRBRAIN", "99RIS", "MR brain")
    done = orm("ORM-9", "SC", "A200", pid="P200", name="OMI^OSCAR", status="CM")
    assert ack_code(send(ris_cluster, done)) == "AA"
    assert orders(ris_cluster)["A200"]["status"] == "completed"


@pytest.mark.parametrize(("message", "code", "says"), [
    ("MSH|^~\\&|RIS|HOSP_A|PACS|RAD|20261123||ADT^A08|E-1|P|2.5\rPID|1||||NOID^NOAH\r", "AE", "PID-3"),
    (adt("A08", "E-2", "P300", "DATE^DAN", birth="19701399"), "AE", "PID-7"),
    (orm("E-3", "CA", "NO-SUCH-ORDER"), "AE", "NO-SUCH-ORDER"),
    (orm("E-4", "NW", "A400", start="2026-11-24"), "AE", "ORC-7"),
    ("MSH|^~\\&|RIS|HOSP_A|PACS|RAD|20261123||ORU^R01|E-5|P|2.5\rPID|1||P1\r", "AR", "R01 is not taken"),
])
def test_bad_messages_are_answered_and_change_nothing(ris_cluster: Cluster, message: str, code: str,
                                                      says: str) -> None:
    before = (patients(ris_cluster), orders(ris_cluster))
    ack = send(ris_cluster, message)
    assert ack_code(ack) == code
    assert says in str(ack)
    assert str(ack.segment("ERR"))
    assert (patients(ris_cluster), orders(ris_cluster)) == before


@pytest.mark.parametrize(("version", "msh9", "err1"), [
    ("2.3", "ACK^A08", "PID^1^3^101&Required field missing&HL70357"),
    ("2.3.1", "ACK^A08^ACK", "PID^1^3^101&Required field missing&HL70357"),
    ("2.5.1", "ACK^A08^ACK", ""),
])
def test_the_ack_speaks_the_senders_version(ris_cluster: Cluster, version: str, msh9: str, err1: str) -> None:
    """MSH-9 has no message structure before v2.3.1; before v2.5 the error
    goes in ERR-1, from v2.5 on in ERR-2 and ERR-3."""
    message = f"MSH|^~\\&|RIS|HOSP_A|PACS|RAD|20261123||ADT^A08|V-{version}|P|{version}\rPID|1||||NOID^NOAH\r"
    ack = send(ris_cluster, message)
    assert ack_code(ack) == "AE"
    assert (str(ack.segment("MSH")[9]), str(ack.segment("MSH")[12])) == (msh9, version)
    err = ack.segment("ERR")
    assert str(err[1]) == err1
    assert str(err[2]) == "PID^1^3" and str(err[3]).startswith("101^")


LONG = "9" * 70


@pytest.mark.parametrize(("message", "code", "err3", "says"), [
    (adt("A08", "L-1", LONG, "LONG^LEO"), "AE", "102", "PID-3"),
    (adt("A08", "L-2", "P310", "^".join(["X" * 30] * 3)), "AE", "102", "longer than 64"),
    (adt("A47", "L-3", LONG, "LONG^LEO", prior="P1"), "AE", "102", "PID-3"),
    (orm("L-4", "NW", "ACC12345678901234567"), "AE", "102", "OBR-18"),
    (orm("L-5", "NW", "A310", station="STATION-AE-TOO-LONG"), "AE", "102", "OBR-21"),
    (adt("A08", "L-6", "P311", "NUL\x00^NED"), "AR", "102", "NUL"),
    ("MSH|^~\\&|RIS|HOSP_A|PACS|RAD|20261123||ADT^A08||P|2.5\rPID|1||P312||NOID^NOAH\r", "AR", "101",
     "MSH-10"),
    ("MSH|^~\\&|RIS|HOSP_A|PACS|RAD|20261123||ADT^A99|L-8|P|2.5\rPID|1||P313||X^Y\r", "AR", "201", "A99"),
])
def test_values_the_index_cannot_hold_are_answered_and_logged(ris_cluster: Cluster, message: str, code: str,
                                                              err3: str, says: str) -> None:
    """On PostgreSQL a value longer than its column, or a NUL byte, is an
    error of the database: it must come back as an answer, never as a
    connection closed without one, and be in the message log."""
    before = (patients(ris_cluster), orders(ris_cluster))
    ack = send(ris_cluster, message)
    assert ack_code(ack) == code, str(ack)
    assert says in str(ack) and str(ack.segment("ERR")[3]).startswith(err3 + "^")
    assert (patients(ris_cluster), orders(ris_cluster)) == before
    control = message.split("|")[9]
    assert any(row[0] == control and row[2] == code for row in log_rows(ris_cluster))


def test_partial_dates_escapes_and_time_zones(ris_cluster: Cluster) -> None:
    """A birth year alone is a date in HL7; an escaped delimiter inside a
    name part is no PN delimiter; a hex escape is in the message's character
    set; a scheduled time with a zone offset is served in local time."""
    assert ack_code(send(ris_cluster, adt("A04", "Z-1", "P320", "YEAR^YVES", birth="1980"))) == "AA"
    assert ack_code(send(ris_cluster, adt("A04", "Z-2", "P321", "MONTH^MIA", birth="198005"))) == "AA"
    assert ack_code(send(ris_cluster, adt("A04", "Z-3", "P322", "O'BRIEN\\T\\SONS^MARY\\S\\ANN^^III^MRS"))) == "AA"
    assert ack_code(send(ris_cluster, adt("A04", "Z-4", "P323", "DE\\F\\LA^JOSE\\E\\X"))) == "AA"
    assert ack_code(send(ris_cluster, adt("A04", "Z-5", "P324", "M\\XC39C\\LLER^ANNA"))) == "AA"
    found = patients(ris_cluster)
    assert found[("P320", "HOSP_A")]["patient_birth_date"] == "1980"
    assert found[("P321", "HOSP_A")]["patient_birth_date"] == "198005"
    assert found[("P322", "HOSP_A")]["patient_name"] == "O'BRIEN&SONS^MARY ANN^^MRS^III"
    assert found[("P323", "HOSP_A")]["patient_name"] == "DE|LA^JOSE X"
    assert found[("P324", "HOSP_A")]["patient_name"] == "MÜLLER^ANNA"

    message = orm("Z-6", "NW", "A320", pid="P320", name="YEAR^YVES", birth="1980",
                  start="20301201103000+0200", station="TZ01")
    assert ack_code(send(ris_cluster, message)) == "AA"
    local = datetime(2030, 12, 1, 8, 30, tzinfo=timezone.utc).astimezone().replace(tzinfo=None)
    assert orders(ris_cluster)["A320"]["scheduled_start"] == local.isoformat()

    answers = worklist(ris_cluster, "TZ01", {"PatientBirthDate": "", "AccessionNumber": "A320"},
                       {"ScheduledProcedureStepStartDate": "", "ScheduledProcedureStepStartTime": ""})
    assert len(answers) == 1
    item = answers[0].ScheduledProcedureStepSequence[0]
    assert (item.ScheduledProcedureStepStartDate, item.ScheduledProcedureStepStartTime) == (
        local.strftime("%Y%m%d"), local.strftime("%H%M%S"))
    assert answers[0].PatientBirthDate == ""  # a birth year is no DICOM date


def test_the_index_unreachable_is_answered_ar(tmp_path, caplog: pytest.LogCaptureFixture) -> None:  # noqa: ANN001
    """PostgreSQL down: the message is answered AR (the RIS sends it again),
    not dropped with its connection, and the service log keeps it."""
    settings = load_settings(data_dir=tmp_path,
                             database_url="postgresql+psycopg://postgres@127.0.0.1:1/nowhere?connect_timeout=2")
    data = _with_charset(adt("A08", "DOWN-1", "P900", "MÜLLER^DAN"), "8859/1").encode("iso8859_1")
    ack, _ = respond(data, settings, "127.0.0.1:9")
    parsed = hl7.parse(ack)
    assert ack_code(parsed) == "AR" and str(parsed.segment("MSA")[2]) == "DOWN-1"
    assert str(parsed.segment("ERR")[3]).startswith("207^") and "unreachable" in ack
    (record,) = [r.getMessage() for r in caplog.records if "not logged" in r.getMessage()]
    assert "ADT^A08 DOWN-1 from 127.0.0.1:9" in record and f"{len(data)} bytes" in record
    # the exact bytes, to send again by hand
    assert base64.b64decode(record.split("bytes (base64): ", 1)[1]) == data


def _raw(c: Cluster) -> socket.socket:
    return socket.create_connection(("127.0.0.1", c.hl7_port), timeout=10)


def _read_acks(sock: socket.socket, n: int) -> list[str]:
    reader = FrameReader(1 << 20)
    acks: list[bytes] = []
    while len(acks) < n:
        data = sock.recv(65536)
        if not data:
            break
        acks += reader.feed(data)
    return [a.decode() for a in acks]


def test_framing_split_joined_and_garbage(ris_cluster: Cluster) -> None:
    one = VT + adt("A08", "F-1", "P500", "SPLIT^SAM").encode() + FS + CR
    two = VT + adt("A08", "F-2", "P501", "JOINED^JO").encode() + FS + CR
    three = VT + adt("A08", "F-3", "P502", "JOINED^JAY").encode() + FS + CR
    with _raw(ris_cluster) as s:
        for part in (one[:7], one[7:40], one[40:]):
            s.sendall(part)
            time.sleep(0.2)
        assert "MSA|AA|F-1" in _read_acks(s, 1)[0]
        s.sendall(b"garbage outside any frame" + two + three)
        acks = _read_acks(s, 2)
    assert ["MSA|AA|F-2" in acks[0], "MSA|AA|F-3" in acks[1]] == [True, True]
    assert {("P501", "HOSP_A"), ("P502", "HOSP_A")} <= set(patients(ris_cluster))


@pytest.mark.parametrize("head", ["MSH|^|RIS|HOSP_A", "MSH|^^\\&|RIS|HOSP_A", "MSHX^~\\&XRISXHOSP_A",
                                  "MSH||RIS|HOSP_A"])
def test_broken_encoding_characters_are_rejected(ris_cluster: Cluster, head: str) -> None:
    message = f"{head}|PACS|RAD|20261123||ADT^A08|ENC-1|P|2.5\rPID|1||P700||BROKEN^BEA\r"
    with _raw(ris_cluster) as s:
        s.sendall(VT + message.encode() + FS + CR)
        ack = _read_acks(s, 1)[0]
    assert "MSA|AR|" in ack and "delimiters" in ack
    assert not any(pid == "P700" for pid, _ in patients(ris_cluster))
    assert ack_code(send(ris_cluster, adt("A08", "ENC-2", "P701", "STILL^SERVING"))) == "AA"


def test_no_msh_and_oversized_messages(ris_cluster: Cluster) -> None:
    with _raw(ris_cluster) as s:
        s.sendall(VT + b"PID|1||P1||NOMSH^NED\r" + FS + CR)
        ack = _read_acks(s, 1)[0]
    assert "MSA|AR|" in ack and "MSH" in ack
    with _raw(ris_cluster) as s:
        try:  # 10 MB: the listener stops reading after its limit and closes the connection
            s.sendall(VT + adt("A08", "BIG", "P600", "BIG^BEN").encode() + b"NTE|1||" + b"x" * (10 << 20))
            s.settimeout(10)
            closed = s.recv(100) == b""
        except (ConnectionResetError, BrokenPipeError):
            closed = True
    assert closed, "an oversized message closes its connection"
    assert ("P600", "HOSP_A") not in patients(ris_cluster)
    assert ("BIG", "ADT^A08", "") in set(log_rows(ris_cluster)), "the oversized message is in the log"
    (kept,) = ris_cluster.sql("SELECT raw_bytes FROM hl7_messages WHERE message_control_id = 'BIG'")
    assert bytes(kept[0]) == adt("A08", "BIG", "P600", "BIG^BEN").encode() + b"NTE|1||" + b"x" * (
        65536 - len(adt("A08", "BIG", "P600", "BIG^BEN")) - 7), "its first 64 KB, as they arrived"
    assert ack_code(send(ris_cluster, adt("A08", "AFTER", "P601", "STILL^SERVING"))) == "AA"


def _send_bytes(c: Cluster, message: bytes) -> bytes:
    """One message as these exact bytes; the ACK's bytes."""
    with _raw(c) as s:
        s.sendall(VT + message + FS + CR)
        reader, acks = FrameReader(1 << 20), []
        while not acks:
            data = s.recv(65536)
            assert data, "the listener closed the connection without an ACK"
            acks = reader.feed(data)
    return acks[0]


def _with_charset(message: str, charset: str) -> str:
    """The message with MSH-18 set (MSH-13 to MSH-17 empty)."""
    head, rest = message.split("\r", 1)
    return f"{head}||||||{charset}\r{rest}"


@pytest.mark.parametrize(("charset", "codec", "name"), [
    ("8859/1", "iso8859_1", "MÜLLER^JÖRG"),
    ("8859/5", "iso8859_5", "ИВАНОВ^ИВАН"),
    ("8859/7", "iso8859_7", "ΠΑΠΑΔΟΠΟΥΛΟΣ^ΝΙΚΟΣ"),
    ("UNICODE UTF-8", "utf-8", "ŁÓDŹ^ŻANETA"),
    ("", "utf-8", "GARCÍA^JOSÉ"),  # no MSH-18: UTF-8 when the bytes are UTF-8
    ("", "iso8859_1", "FRANÇOIS^AIMÉE"),  # … else ISO 8859-1
])
def test_messages_are_read_in_the_character_set_they_name(ris_cluster: Cluster, charset: str, codec: str,
                                                           name: str) -> None:
    pid = f"CS-{codec}-{bool(charset)}"
    message = adt("A08", f"CS-{pid}", pid, name)
    ack = _send_bytes(ris_cluster, (_with_charset(message, charset) if charset else message).encode(codec))
    assert f"MSA|AA|CS-{pid}".encode() in ack
    if charset:  # the ACK names the character set it is written in
        assert hl7.parse(ack.decode(codec)).segment("MSH")[18][0] == charset
    assert patients(ris_cluster)[(pid, "HOSP_A")]["patient_name"] == name


@pytest.mark.parametrize(("charset", "says"), [
    ("EBCDIC", "character set 'EBCDIC' is not one of"),
    ("UNICODE UTF-8", "is not in UNICODE UTF-8"),  # the bytes below are ISO 8859-1
])
def test_an_unknown_or_false_character_set_is_rejected(ris_cluster: Cluster, charset: str, says: str) -> None:
    message = _with_charset(adt("A08", "CS-BAD", "CS-BAD", "MÜLLER^MIA"), charset)
    ack = _send_bytes(ris_cluster, message.encode("iso8859_1")).decode()
    assert "MSA|AR|CS-BAD" in ack and says in ack
    assert ("CS-BAD", "HOSP_A") not in patients(ris_cluster)


def test_the_domains_identifier_is_taken_from_a_list(ris_cluster: Cluster) -> None:
    """PID-3 lists several identifiers: the one of the domain's assigning
    authority, else the medical record number, else the first."""
    ris_cluster.pacs("ris", "domain", "add", "NORTH_MRN", "--facility", "HOSP_N")
    listed = adt("A04", "ID-1", "SSN-1^^^SSA^SS~MRN-1^^^HOSP_E^MR~N-1^^^NORTH_MRN^PI", "LIST^LEA",
                 facility="HOSP_N")
    assert ack_code(send(ris_cluster, listed)) == "AA"
    assert ack_code(send(ris_cluster, adt("A04", "ID-2", "SSN-2^^^SSA^SS~MRN-2^^^HOSP_E^MR", "LIST^LIV",
                                          facility="HOSP_E"))) == "AA"
    found = patients(ris_cluster)
    assert found[("N-1", "NORTH_MRN")]["patient_name"] == "LIST^LEA"
    assert found[("MRN-2", "HOSP_E")]["patient_name"] == "LIST^LIV"
    assert not {("SSN-1", "SSA"), ("SSN-2", "SSA"), ("MRN-1", "HOSP_E")} & set(found)


def test_orm_takes_the_study_uid_the_ris_assigned(ris_cluster: Cluster) -> None:
    """IHE RAD-4: ZDS-1 carries the Study Instance UID; the worklist serves it."""
    message = orm("ZDS-1", "NW", "A900") + "ZDS|1.2.826.0.1.3680043.8.498.900^100^Application^DICOM\r"
    assert ack_code(send(ris_cluster, message)) == "AA"
    assert orders(ris_cluster)["A900"]["study_instance_uid"] == "1.2.826.0.1.3680043.8.498.900"
    assert ack_code(send(ris_cluster, orm("ZDS-2", "NW", "A901"))) == "AA"
    assert orders(ris_cluster)["A901"]["study_instance_uid"].startswith("2.25.")  # none given: ours


def _pacs_bytes(c: Cluster, *args: str) -> subprocess.CompletedProcess:
    """``pacs`` with its standard output as bytes."""
    return subprocess.run([sys.executable, "-m", "admin.cli", *args], env=c.env, capture_output=True, timeout=120)


@pytest.mark.parametrize(("control", "message", "code"), [
    ("RAW-1", _with_charset(adt("A08", "RAW-1", "P800", "MÜLLER^JÖRG"), "8859/1").encode("iso8859_1"), "AA"),
    ("RAW-2", adt("A08", "RAW-2", "P801", "FRANÇOIS^AIMÉE").encode("iso8859_1"), "AA"),  # no MSH-18
    ("RAW-3", adt("A08", "RAW-3", "P802", "NUL\x00^NED").encode(), "AR"),
    ("RAW-4", adt("A08", "RAW-4", "P803", "CRLF^CARL").replace("\r", "\r\n").encode(), "AA"),
    ("RAW-5", _with_charset(adt("A08", "RAW-5", "P804", "MÜLLER^MIA"), "UNICODE UTF-8").encode("iso8859_1"),
     "AR"),  # bytes that are not in the set MSH-18 names
])
def test_the_log_gives_back_the_bytes_received(ris_cluster: Cluster, tmp_path, control: str,  # noqa: ANN001
                                               message: bytes, code: str) -> None:
    """A message in ISO 8859-1, with a NUL byte or CR LF line ends comes
    back from ``pacs ris log`` exactly as it was sent, applied or not."""
    assert f"MSA|{code}|{control}".encode() in _send_bytes(ris_cluster, message)
    (row,) = ris_cluster.pacs_json("ris", "log", "--control-id", control)
    assert (row["ack_code"], row["size"]) == (code, len(message))
    assert base64.b64decode(row["raw_base64"]) == message
    raw = _pacs_bytes(ris_cluster, "ris", "log", "--id", str(row["id"]), "--raw")
    assert raw.returncode == 0 and raw.stdout == message
    out = tmp_path / "message.hl7"
    written = _pacs_bytes(ris_cluster, "ris", "log", "--id", str(row["id"]), "--output", str(out))
    assert written.returncode == 0 and out.read_bytes() == message
    assert ris_cluster.pacs_json("ris", "log", "--id", str(row["id"]))["raw_base64"] == row["raw_base64"]


def test_an_unframed_message_closes_its_connection_at_once(ris_cluster: Cluster) -> None:
    """A message sent without MLLP's <VT> would wait for an answer until the
    idle timeout (300 s): its connection is closed at once, the service log
    says what began it (not the megabyte that followed), and the listener
    serves on."""
    bare = adt("A08", "BARE-1", "P850", "BARE^BEN").encode() + b"NTE|1||" + b"y" * (1 << 20)
    began = time.monotonic()
    with _raw(ris_cluster) as s:
        s.settimeout(10)
        try:
            s.sendall(bare)
            closed = s.recv(100) == b""
        except (ConnectionResetError, BrokenPipeError):
            closed = True
    assert closed and time.monotonic() - began < 5, "the connection is closed, not left to time out"
    assert ("P850", "HOSP_A") not in patients(ris_cluster)
    lines = [line for line in ris_cluster.log().splitlines() if "0x0B" in line and "BARE-1" in line]
    assert len(lines) == 1 and len(lines[0]) < 1000, lines
    assert ack_code(send(ris_cluster, adt("A08", "BARE-2", "P851", "STILL^SERVING"))) == "AA"


def test_a47_takes_the_assigning_authority_pid3_names(ris_cluster: Cluster, tmp_path) -> None:  # noqa: ANN001
    """ADT^A47 with PID-3.4: the patient moves to that authority, with its
    stored study and its order (export and worklist C-FIND give the new
    identifier); an identifier taken there, or one DICOM cannot carry, is
    refused AE and changes nothing."""
    c = ris_cluster
    order(c, "CHG-1", "CH1", "MOVE^MIA", "19750505", "F")
    uid = send_study(c, tmp_path / "s", "CHG-1", "CH1", "MOVE^MIA", "19750505", "F")
    c.wait_indexed(1)
    # another patient, CH5 of CITY: its identifier is no obstacle to CH5 in another authority (below)
    assert ack_code(send(c, adt("A01", "CHG-A01", "CH5", "OTHER^OTTO", authority="CITY"))) == "AA"

    ack = send(c, adt("A47", "CHG-A47", "CH2", "MOVE^MIA", "19750505", "F", authority="CITY", prior="CH1"))
    assert ack_code(ack) == "AA", str(ack)
    found = patients(c)
    assert ("CH1", "HOSP_A") not in found and ("CH2", "HOSP_A") not in found
    assert found[("CH2", "CITY")]["prior_ids"] == [
        {"patient_id": "CH1", "issuer_of_patient_id": "HOSP_A", "event": "A47"}]
    shown = c.pacs_json("study", "show", uid)
    assert (shown["patient_id"], shown["issuer_of_patient_id"]) == ("CH2", "CITY")
    ds = export_one(c, uid, tmp_path / "exp")
    assert (ds.PatientID, ds.IssuerOfPatientID) == ("CH2", "CITY")
    replaced = ds.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0]
    assert (replaced.PatientID, replaced.IssuerOfPatientID) == ("CH1", "")
    keys = {"PatientID": "", "IssuerOfPatientID": "", "AccessionNumber": "CHG-1"}
    answers = worklist(c, "CT01", keys, {"ScheduledStationAETitle": ""})
    assert [(a.PatientID, a.IssuerOfPatientID) for a in answers] == [("CH2", "CITY")]
    assert worklist(c, "CT01", {**keys, "PatientID": "CH1"}, {"ScheduledStationAETitle": ""}) == []

    before = patients(c)
    refused = [
        (adt("A47", "CHG-BAD-1", "CH5", "MOVE^MIA", authority="CITY", prior="CH2^^^CITY"), "PID^1^3", "205",
         "exists already"),
        (adt("A47", "CHG-BAD-2", "CH6", "MOVE^MIA", authority="A" * 65, prior="CH2^^^CITY"), "PID^1^3", "102",
         "longer than 64"),
        (adt("A47", "CHG-BAD-3", "CH6", "MOVE^MIA", authority="BAD\\E\\ONE", prior="CH2^^^CITY"), "PID^1^3",
         "102", "backslash"),
    ]
    for message, where, err3, says in refused:
        ack = send(c, message)
        assert ack_code(ack) == "AE" and says in str(ack), str(ack)
        assert (str(ack.segment("ERR")[2]), str(ack.segment("ERR")[3]).split("^")[0]) == (where, err3)
    assert patients(c) == before, "a refused change changes nothing"

    # back into the sending facility's domain, by a second A47 naming CITY in MRG-1
    ack = send(c, adt("A47", "CHG-A47b", "CH5", "MOVE^MIA", authority="HOSP_A", prior="CH2^^^CITY"))
    assert ack_code(ack) == "AA", str(ack)
    assert c.pacs_json("study", "show", uid)["patient_id"] == "CH5"
    assert patients(c)[("CH5", "CITY")]["patient_name"] == "OTHER^OTTO", "the other CH5 is untouched"
    assert export_one(c, uid, tmp_path / "exp2").PatientID == "CH5"
