"""``pacs ris patients``, ``orders`` and ``log`` with their filters, as an
administrator runs them against a real PostgreSQL (the cluster's database;
no service needs to run): what each filter keeps, ``--limit`` and the notice
that more matched, ``--json``, and bad filter values refused with a message
and exit code 2. The patients, orders and log rows come from HL7 messages
applied by the listener's own code."""

from __future__ import annotations

import base64
import json

import pytest

from gateway.hl7 import respond
from services.settings import Settings
from tests.cluster import Cluster
from tests.ris import adt, orm


def _apply(s: Settings, *messages: str) -> None:
    for message in messages:
        respond(message.encode(), s, "127.0.0.1:1")


def _ids(rows: list[dict], key: str = "patient_id") -> list[str]:
    return [r[key] for r in rows]


def test_patients_by_id_issuer_and_name(db: tuple[Cluster, Settings]) -> None:
    c, s = db
    _apply(s, adt("A04", "P-1", "P1", "DOE^JOHN"), adt("A04", "P-2", "P2", "DOE^JANE"),
           adt("A04", "P-3", "P3", "DOEBLER^ANN"), adt("A04", "P-4", "P1", "DOE^JOHN", facility="HOSP_B"),
           adt("A04", "P-5", "P5", "SNAKE_CASE^SAM"), adt("A04", "P-6", "P6", "SNAKEXCASE^SAM"),
           adt("A04", "P-7", "P7", "ROE^RITA", facility="HOSP_B"))

    def patients(*args: str) -> list[tuple[str, str, str]]:
        return [(p["patient_id"], p["issuer_of_patient_id"], p["patient_name"])
                for p in c.pacs_json("ris", "patients", *args)]

    assert sorted(patients("--name", "doe*")) == [("P1", "HOSP_A", "DOE^JOHN"), ("P1", "HOSP_B", "DOE^JOHN"),
                                                  ("P2", "HOSP_A", "DOE^JANE"), ("P3", "HOSP_A", "DOEBLER^ANN")]
    assert patients("--name", "Doe^J?N*") == [("P2", "HOSP_A", "DOE^JANE")]
    assert patients("--name", "DOE") == [], "a name without a wildcard matches the whole name"
    assert _ids(c.pacs_json("ris", "patients", "--name", "snake_case*")) == ["P5"], "_ is no wildcard"
    assert sorted(patients("--id", "P1")) == [("P1", "HOSP_A", "DOE^JOHN"), ("P1", "HOSP_B", "DOE^JOHN")]
    assert patients("--id", "P1", "--issuer", "HOSP_B") == [("P1", "HOSP_B", "DOE^JOHN")]
    assert sorted(_ids(c.pacs_json("ris", "patients", "--issuer", "HOSP_B"))) == ["P1", "P7"]
    table = " ".join(c.pacs("ris", "patients", "--name", "ROE*").stdout.split())
    assert "P7" in table and "ROE^RITA" in table and "DOE^JOHN" not in table

    # --limit, and the notice on standard error that more matched (JSON stays a list)
    limited = c.pacs("ris", "patients", "--name", "DOE*", "--limit", "2", "--json")
    assert len(json.loads(limited.stdout)) == 2
    assert "2 of 4 patients shown" in limited.stderr
    assert "shown" not in c.pacs("ris", "patients", "--name", "DOE*", "--json").stderr

    # by default, the first 100
    _apply(s, *(adt("A04", f"B-{n}", f"B{n:03}", f"BULK^N{n:03}") for n in range(100)))
    default = c.pacs("ris", "patients", "--json")
    assert len(json.loads(default.stdout)) == 100 and "100 of 107 patients shown" in default.stderr
    assert len(c.pacs_json("ris", "patients", "--limit", "0")) == 107


def test_orders_by_accession_patient_status_modality_station_and_date(db: tuple[Cluster, Settings]) -> None:
    c, s = db
    _apply(s, orm("O-1", "NW", "A1", pid="P1", start="202611241030", modality="CT", station="CT01"),
           orm("O-2", "NW", "A2", pid="P2", start="202611251400", modality="MR", station="MR01"),
           orm("O-3", "NW", "A3", pid="P3", start="202611260800", modality="CT", station="CT02"),
           orm("O-4", "NW", "A4", pid="P1", start="202612010900", modality="CT", station="CT01"),
           orm("O-5", "CA", "A3", pid="P3", start="", modality="", station=""))

    def accessions(*args: str) -> list[str]:
        return _ids(c.pacs_json("ris", "orders", *args), "accession_number")

    assert accessions() == ["A1", "A2", "A3", "A4"]
    assert accessions("--accession", "A2") == ["A2"]
    assert accessions("--patient-id", "P1") == ["A1", "A4"]
    assert accessions("--status", "cancelled") == ["A3"]
    assert accessions("--status", "SCHEDULED") == ["A1", "A2", "A4"]
    assert accessions("--modality", "ct") == ["A1", "A3", "A4"]
    assert accessions("--station", "CT01") == ["A1", "A4"]
    assert accessions("--date", "20261124") == ["A1"]
    assert accessions("--date", "20261125-20261126") == ["A2", "A3"]
    assert accessions("--date", "20261126-") == ["A3", "A4"]
    assert accessions("--date", "-20261124") == ["A1"]
    assert accessions("--modality", "CT", "--status", "scheduled", "--date", "20261124-20261231") == ["A1", "A4"]
    assert accessions("--station", "NOWHERE") == []
    limited = c.pacs("ris", "orders", "--modality", "CT", "--limit", "1")
    assert "A1" in limited.stdout and "A4" not in limited.stdout and "1 of 3 orders shown" in limited.stderr


def test_log_by_type_ack_control_id_and_time(db: tuple[Cluster, Settings]) -> None:
    c, s = db
    _apply(s, adt("A04", "L-1", "P1", "DOE^JOHN"), adt("A08", "L-2", "P1", "DOE^JONATHAN"),
           adt("A08", "L-3", "P1", "DOE^JON", birth="19701399"),
           "MSH|^~\\&|RIS|HOSP_A|PACS|RAD|20261123||ORU^R01|L-4|P|2.5\rPID|1||P1\r",
           orm("L-5", "NW", "A1", pid="P1"))

    def controls(*args: str) -> list[str]:
        return _ids(c.pacs_json("ris", "log", *args), "message_control_id")

    assert controls() == ["L-5", "L-4", "L-3", "L-2", "L-1"], "newest first"
    assert controls("--type", "ADT^A08") == ["L-3", "L-2"]
    assert controls("--type", "adt") == ["L-3", "L-2", "L-1"]
    assert controls("--ack", "AE") == ["L-3"] and controls("--ack", "ar") == ["L-4"]
    assert controls("--control-id", "L-2") == ["L-2"]
    assert controls("--since", "1h") == controls() and controls("--since", "2099-01-01") == []
    assert controls("--type", "ADT", "--ack", "AA", "--limit", "1") == ["L-2"]
    limited = c.pacs("ris", "log", "--limit", "2")
    assert "L-5" in limited.stdout and "L-3" not in limited.stdout and "2 of 5 messages shown" in limited.stderr

    (row,) = c.pacs_json("ris", "log", "--control-id", "L-3")
    assert row["ack_code"] == "AE" and "PID-7" in row["error"]
    assert base64.b64decode(row["raw_base64"]) == adt("A08", "L-3", "P1", "DOE^JON", birth="19701399").encode()
    assert c.pacs_json("ris", "log", "--id", str(row["id"])) == row
    shown = c.pacs("ris", "log", "--id", str(row["id"])).stdout
    assert "answered AE" in shown and "\nPID|1||P1||DOE^JON||19701399|M\n" in shown


@pytest.mark.parametrize(("args", "says"), [
    (("ris", "orders", "--date", "2026-11-24"), "'2026-11-24' is not a date YYYYMMDD or a range YYYYMMDD-YYYYMMDD"),
    (("ris", "orders", "--date", "20261399"), "'20261399' is not a date YYYYMMDD"),
    (("ris", "orders", "--date", "20261201-20261101"), "ends before it starts"),
    (("ris", "orders", "--date", "-"), "is not a date YYYYMMDD or a range"),
    (("ris", "orders", "--status", "done"), "--status 'done': give one of scheduled, cancelled, completed"),
    (("ris", "patients", "--limit", "-1"), "--limit -1"),
    (("ris", "log", "--ack", "OK"), "--ack 'OK': give one of AA, AE, AR"),
    (("ris", "log", "--type", "ADT^"), "--type 'ADT^'"),
    (("ris", "log", "--since", "yesterday"), "'yesterday' is not a time"),
    (("ris", "log", "--raw"), "say which with --id"),
    (("ris", "log", "--id", "1", "--raw", "--output", "x.hl7"), "give one"),
])
def test_bad_filter_values_are_refused(db: tuple[Cluster, Settings], args: tuple[str, ...], says: str) -> None:
    c, _ = db
    done = c.pacs(*args, check=False)
    assert done.returncode == 2 and says in " ".join(done.stderr.split()), done.stderr
    assert done.stdout == ""


def test_a_message_not_in_the_log(db: tuple[Cluster, Settings]) -> None:
    c, _ = db
    missing = c.pacs("ris", "log", "--id", "999", "--raw", check=False)
    assert missing.returncode == 1 and "no message 999" in missing.stderr and missing.stdout == ""
