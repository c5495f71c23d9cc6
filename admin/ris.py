"""``pacs ris``, ``pacs quarantine``, ``pacs report`` and ``pacs hl7``: what
the HIS/RIS told us, the studies that disagree with it, and what we send
back."""

from __future__ import annotations

import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from admin._common import JsonOpt, err, fail as _fail, out, print_json as _print_json, ready as _ready
from admin._common import rows as _rows, settings_or_exit as _settings, study_or_fail as _study_or_fail

ris_app = typer.Typer(help="What the HIS/RIS told us: domains, patients, orders, messages.", no_args_is_help=True)
quarantine_app = typer.Typer(help="Studies whose demographics disagree with their order.", no_args_is_help=True)
report_app = typer.Typer(help="Reports on studies (sent to the RIS as ORU^R01).", no_args_is_help=True)
hl7_app = typer.Typer(help="HL7 messages to the RIS.", no_args_is_help=True)


LIMIT = 100  # rows a listing shows unless told otherwise
LimitOpt = Annotated[int, typer.Option(help="show at most this many (0: all); the output says when more matched")]


def _bad(value: str, what: str) -> ValueError:
    return ValueError(f"{value!r} is not {what}")


def _date_range(value: str) -> tuple[datetime | None, datetime | None]:
    """``YYYYMMDD``, ``YYYYMMDD-YYYYMMDD``, ``YYYYMMDD-`` or ``-YYYYMMDD``
    as the worklist matches a scheduled start (:func:`dbserver.worklist.date_range`),
    held to whole dates, at least one end, in order."""
    from dbserver.worklist import date_range

    low, _, high = value.strip().partition("-")
    what = "a date YYYYMMDD or a range YYYYMMDD-YYYYMMDD"
    if not (low or high) or any(part and not re.fullmatch(r"\d{8}", part) for part in (low, high)):
        raise _bad(value, what)
    try:
        start, end = date_range(value.strip()) or (None, None)
    except ValueError:
        raise _bad(value, what) from None
    if start and end and start >= end:
        raise ValueError(f"the range {value!r} ends before it starts")
    return start, end


_SPAN = re.compile(r"^(\d+)\s*([smhd])$")


def _since(value: str) -> datetime:
    """A moment: ``30m``, ``2h``, ``7d`` ago, or a date or time (ISO
    ``2026-12-01``, ``2026-12-01T08:30``, or ``20261201[HHMM[SS]]``), in this
    machine's local time unless it names a zone."""
    text = value.strip()
    span = _SPAN.match(text.lower())
    if span:
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[span.group(2)]
        return datetime.now(timezone.utc) - timedelta(**{unit: int(span.group(1))})
    when = None
    for fmt in ("%Y%m%d%H%M%S", "%Y%m%d%H%M", "%Y%m%d"):
        try:
            when = datetime.strptime(text, fmt)
            break
        except ValueError:
            continue
    if when is None:
        try:
            when = datetime.fromisoformat(text)
        except ValueError:
            raise _bad(value, "a time: 30m, 2h, 7d, 2026-12-01, 2026-12-01T08:30 or 20261201") from None
    return (when if when.tzinfo else when.astimezone()).astimezone(timezone.utc)


def _limit(limit: int) -> int | None:
    if limit < 0:
        raise ValueError(f"--limit {limit}: give a number of rows, or 0 for all")
    return limit or None


def _listing(rows: list[dict[str, Any]], total: int, columns: list[str], as_json: bool, what: str) -> None:
    """The rows (a table, or JSON: a list, as before filters existed), and on
    standard error how many more matched than shown."""
    _rows(rows, columns, as_json)
    if total > len(rows):
        err.print(f"{len(rows)} of {total} {what} shown: narrow the filters, or --limit {total} (0: all)",
                  markup=False, highlight=False)


@ris_app.command("patients")
def ris_patients(
    as_json: JsonOpt = False,
    patient_id: Annotated[Optional[str], typer.Option("--id", help="this Patient ID (exactly)")] = None,
    issuer: Annotated[Optional[str], typer.Option(help="of this issuer (assigning authority; '' for none)")] = None,
    name: Annotated[Optional[str], typer.Option(
        help="Patient Name as DICOM matches it: * any run, ? one character, any case (DOE^J*)")] = None,
    limit: LimitOpt = LIMIT,
) -> None:
    """Patients, from orders and from received studies, by name, with the
    identifiers they had before (merged, changed)."""
    settings = _settings()
    try:
        rows_limit = _limit(limit)
    except ValueError as exc:
        _fail(str(exc), 2)
    _ready(settings)
    from dbserver.worklist import find_patients

    rows, total = find_patients(settings, patient_id=patient_id, issuer=issuer, name=name, limit=rows_limit)
    _listing(rows, total, ["patient_id", "issuer_of_patient_id", "patient_name", "patient_birth_date",
                           "patient_sex"], as_json, "patients")


ORDER_STATES = ("scheduled", "cancelled", "completed")


@ris_app.command("orders")
def ris_orders(
    as_json: JsonOpt = False,
    status: Annotated[Optional[str], typer.Option(help="scheduled, cancelled or completed")] = None,
    accession: Annotated[Optional[str], typer.Option(help="this accession number")] = None,
    patient_id: Annotated[Optional[str], typer.Option("--patient-id", help="of this Patient ID")] = None,
    modality: Annotated[Optional[str], typer.Option(help="this modality (CT, MR…)")] = None,
    station: Annotated[Optional[str], typer.Option(help="for this scheduled station AE title")] = None,
    date: Annotated[Optional[str], typer.Option(
        help="scheduled start on YYYYMMDD, or in YYYYMMDD-YYYYMMDD (either end may be left open)")] = None,
    limit: LimitOpt = LIMIT,
) -> None:
    """Orders, soonest first (the modality worklist is made of the scheduled ones)."""
    settings = _settings()
    try:
        if status is not None and status.lower() not in ORDER_STATES:
            raise ValueError(f"--status {status!r}: give one of {', '.join(ORDER_STATES)}")
        start, end = _date_range(date) if date is not None else (None, None)
        rows_limit = _limit(limit)
    except ValueError as exc:
        _fail(str(exc), 2)
    _ready(settings)
    from dbserver.worklist import find_orders

    rows, total = find_orders(settings, accession=accession, patient_id=patient_id,
                              status=status.lower() if status else None,
                              modality=modality.upper() if modality else None,
                              station=station, start=start, end=end, limit=rows_limit)
    _listing(rows, total, ["accession_number", "patient_id", "patient_name", "modality",
                           "scheduled_station_ae_title", "scheduled_start", "status"], as_json, "orders")


def _actor() -> str:
    import getpass

    return f"cli:{getpass.getuser()}"


def _decide(uid: str, decision: str, reason: str, as_json: bool, accession: str | None = None,
            issuer: str | None = None) -> None:
    from dbserver.validation import record_decision

    settings = _settings()
    _ready(settings)
    try:
        result = record_decision(settings, uid, decision, _actor(), reason, accession, issuer)
    except (LookupError, ValueError) as exc:  # audited as a failure; nothing changed
        _fail(str(exc).strip("'\""), 2)
    if as_json:
        _print_json(result)
        return
    order = f" (order {result['accession_number']} of {result['issuer_of_accession_number']})" \
        if decision == "reconcile" else ""
    out.print(f"{result['study_instance_uid']}: {result['validation_status']}{order}")


@quarantine_app.command("reconcile")
def quarantine_reconcile(
    uid: str,
    accession: Annotated[str, typer.Option(help="the accession number of the order to take")],
    issuer: Annotated[Optional[str], typer.Option(
        help="issuer of that accession number (the RIS domain); needed when several domains have it")] = None,
    reason: Annotated[str, typer.Option(help="why")] = "demographics corrected from the order",
    as_json: JsonOpt = False,
) -> None:
    """Give a quarantined study the demographics of an order."""
    _decide(uid, "reconcile", reason, as_json, accession, issuer)


@quarantine_app.command("accept")
def quarantine_accept(uid: str, reason: Annotated[str, typer.Option(help="why")], as_json: JsonOpt = False) -> None:
    """Accept a quarantined study as received."""
    _decide(uid, "accept", reason, as_json)


@quarantine_app.command("reject")
def quarantine_reject(uid: str, reason: Annotated[str, typer.Option(help="why")], as_json: JsonOpt = False) -> None:
    """Reject a quarantined study: kept, but out of every clinical view."""
    _decide(uid, "reject", reason, as_json)


@quarantine_app.command("purge")
def quarantine_purge(uid: str, reason: Annotated[str, typer.Option(help="why")],
                     yes: Annotated[bool, typer.Option("--yes", help="do not ask")] = False,
                     as_json: JsonOpt = False) -> None:
    """Delete a rejected study for good: its index rows now, its objects from the archive."""
    from dbserver.purge import purge_study
    from dbserver.queries import audit_now, validation_status
    from dbserver.validation import REJECTED
    from services.db import run_in_transaction
    from services.errors import PacsError

    settings = _settings()
    _ready(settings)
    actor = _actor()

    def refuse(message: str, code: int) -> None:  # audited as a failure; nothing changed
        audit_now(settings, "quarantine-purge", "study", uid, actor=actor, outcome="failure", reason=reason,
                  error=message)
        _fail(message, code)

    try:  # refused before asking: only a rejected study, and a reason
        state = validation_status(settings, uid)
    except PacsError as exc:
        refuse(str(exc), 2)
    if state is None:
        refuse(f"no study {uid}", 1)
    if state != REJECTED:
        refuse(f"study {uid} is {state}: only a rejected study can be purged (pacs quarantine reject first)", 2)
    if not reason.strip():
        refuse("say why (--reason)", 2)
    if not yes:
        typer.confirm(f"Delete study {uid} and every object of it for good?", abort=True)
    try:
        result = run_in_transaction(lambda s: purge_study(s, uid, actor, reason), settings)
    except LookupError as exc:
        refuse(str(exc).strip("'\""), 1)
    except (PacsError, ValueError) as exc:
        refuse(str(exc), 2)
    if as_json:
        _print_json({**result, "validation_status": "purged"})
        return
    out.print(f"{uid}: purged, {result['instances']} instances; the archive deletes {result['objects']} objects")


def _received(study: dict) -> dict:
    """The demographics this study's own images carry (kept by validation),
    else the patient row's."""
    received = study["validation_detail"].get("received") or {}
    return {k: received.get(k, study[k]) for k in ("patient_id", "patient_name", "patient_birth_date",
                                                    "patient_sex")}


@quarantine_app.command("show")
def quarantine_show(uid: str, as_json: JsonOpt = False) -> None:
    """A study's validation: its order, what differs, the decision taken."""

    settings = _settings()
    _ready(settings)
    study = _study_or_fail(settings, uid)
    summary = {k: study[k] for k in ("study_instance_uid", "accession_number", "patient_id", "patient_name",
                                     "patient_birth_date", "patient_sex", "validation_status",
                                     "validation_detail", "num_instances")}
    if as_json:
        _print_json(summary)
        return
    images = _received(study)
    out.print(f"{uid}: {study['validation_status']}  acc {study['accession_number']}  "
              f"images: {images['patient_name']} ({images['patient_id']})")
    detail = study["validation_detail"]
    if detail.get("ambiguous_issuers"):
        out.print(f"  {detail['reason']}")
    for key, diff in detail.get("differences", {}).items():
        out.print(f"  {key}: images {diff['images']!r}, RIS {diff['ris']!r}")
    decision = detail.get("decision")
    if decision:
        out.print(f"  {decision['status']} by {decision['by']} at {decision['at']}: {decision['reason']}")


@quarantine_app.command("list")
def quarantine_list(
    as_json: JsonOpt = False,
    state: Annotated[str, typer.Option(help="quarantined, rejected, accepted, reconciled or all")] = "quarantined",
) -> None:
    """Studies of the quarantine (by default those waiting for a decision), with what differs from their order."""
    from dbserver.queries import list_studies

    settings = _settings()
    _ready(settings)
    try:
        studies = list_studies(settings, quarantined=True, state=state)
    except ValueError as exc:
        _fail(str(exc), 2)
    if as_json:
        _print_json(studies)
        return
    for s in studies:
        detail = s["validation_detail"]
        why = "; ".join(f"{k}: images {v['images']!r}, RIS {v['ris']!r}"
                        for k, v in detail.get("differences", {}).items())
        if detail.get("ambiguous_issuers"):
            why = f"accession number in several domains: {', '.join(detail['ambiguous_issuers'])}"
        status = f"  [{s['validation_status']}]" if state != "quarantined" else ""
        out.print(f"{s['study_instance_uid']}{status}  acc {s['accession_number']}  {s['patient_name']} "
                  f"({s['patient_id']})  — {why}")


# --- RIS domains and the message log --------------------------------------------------------
domain_app = typer.Typer(help="RIS domains: issuer, sending facility, where reports go.", no_args_is_help=True)
ris_app.add_typer(domain_app, name="domain")


@domain_app.command("add")
def domain_add(
    issuer: Annotated[str, typer.Argument(help="assigning authority of the domain's Patient IDs")],
    facility: Annotated[str, typer.Option(help="the sending facility (MSH-4) of its HL7 messages")] = "",
    report_host: Annotated[str, typer.Option(help="where its reports go (MLLP host)")] = "",
    report_port: Annotated[Optional[int], typer.Option(help="MLLP port of its report receiver")] = None,
    application: Annotated[str, typer.Option(help="receiving application (MSH-5) of reports")] = "",
    description: str = "",
    adopt: Annotated[bool, typer.Option(
        "--adopt/--no-adopt",
        help="move patients, orders and prior identifiers stored under the facility's name to the domain")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Add or change a RIS domain."""
    from dbserver.domains import add_domain

    settings = _settings()
    _ready(settings)
    try:
        domain = add_domain(settings, issuer, facility, report_host, report_port, application, description, adopt)
    except ValueError as exc:
        _fail(str(exc), 2)
    if as_json:
        _print_json(domain)
        return
    out.print(f"domain {domain['issuer']}: facility {domain['sending_facility'] or '—'}, "
              f"reports to {domain['report_to'] or '—'}")
    if any(domain["adopted"].values()):
        counts = ", ".join(f"{n} {what.replace('_', ' ')}" for what, n in domain["adopted"].items() if n)
        out.print(f"adopted from {domain['sending_facility']}: {counts}")


@domain_app.command("list")
def domain_list(as_json: JsonOpt = False) -> None:
    """List the RIS domains."""
    from dbserver.domains import list_domains

    settings = _settings()
    _ready(settings)
    _rows(list_domains(settings), ["issuer", "sending_facility", "report_to", "receiving_application",
                                   "description"], as_json)


@domain_app.command("remove")
def domain_remove(issuer: str, as_json: JsonOpt = False) -> None:
    """Remove a RIS domain."""
    from dbserver.domains import remove_domain

    settings = _settings()
    _ready(settings)
    if not remove_domain(settings, issuer):
        _fail(f"no domain {issuer!r}")
    if as_json:
        _print_json({"issuer": issuer, "removed": True})
        return
    out.print(f"removed {issuer}")


ACK_CODES = ("AA", "AE", "AR", "CA", "CE", "CR")
_MESSAGE_TYPE = re.compile(r"^[A-Z0-9]{3}(\^[A-Z0-9]{3})?$")


def _log_filters(message_type: str | None, ack: str | None, since: str | None) -> dict[str, Any]:
    kind = message_type.strip().upper() if message_type is not None else None
    if kind is not None and not _MESSAGE_TYPE.match(kind):
        raise ValueError(f"--type {message_type!r}: give a message type (ADT) or type and event (ADT^A08)")
    code = ack.strip().upper() if ack is not None else None
    if code is not None and code not in ACK_CODES:
        raise ValueError(f"--ack {ack!r}: give one of {', '.join(ACK_CODES)}")
    return {"message_type": kind, "ack": code, "since": _since(since) if since is not None else None}


def _write_bytes(row: dict[str, Any], data: bytes | None, output: Path | None) -> None:
    if data is None:
        _fail(f"message {row['id']} was logged before the log kept the bytes received: only its text is "
              f"known (pacs ris log --id {row['id']} --json)")
    if output is None:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        output.write_bytes(data)
    except OSError as exc:
        _fail(f"cannot write {output}: {exc.strerror or exc}")
    err.print(f"message {row['id']}: {len(data)} bytes written to {output}", markup=False, highlight=False)


def _show_message(row: dict[str, Any]) -> None:
    answer = f"answered {row['ack_code']}" if row["ack_code"] else "not answered"
    sys.stdout.write(
        f"message {row['id']}  {row['direction']}  {row['at']}  {row['remote']}\n"
        f"{row['message_type'] or '?'}  control ID {row['message_control_id'] or '?'}  "
        f"from {row['sending_application'] or '?'}/{row['sending_facility'] or '?'}  {answer}"
        f"{': ' + row['error'] if row['error'] else ''}\n"
        f"{row['size'] if row['size'] is not None else '?'} bytes"
        f"{'' if row['size'] is not None else ' (logged before the bytes were kept)'}\n\n"
        + row["raw"].replace("\r", "\n").rstrip("\n") + "\n")


@ris_app.command("log")
def ris_log(
    as_json: JsonOpt = False,
    message_id: Annotated[Optional[int], typer.Option("--id", help="this message only (its id in the listing)")] = None,
    raw: Annotated[bool, typer.Option(
        "--raw", help="with --id: write the message's exact bytes, as received, to standard output")] = False,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="with --id: write the message's exact bytes to this file")] = None,
    message_type: Annotated[Optional[str], typer.Option("--type", help="ADT, or ADT^A08")] = None,
    ack: Annotated[Optional[str], typer.Option(help="answered AA, AE or AR (CA, CE, CR from a RIS)")] = None,
    control_id: Annotated[Optional[str], typer.Option("--control-id", help="this message control ID (MSH-10)")] = None,
    since: Annotated[Optional[str], typer.Option(
        help="since 30m, 2h, 7d ago, or a local date or time (2026-12-01, 2026-12-01T08:30, 20261201)")] = None,
    limit: LimitOpt = LIMIT,
) -> None:
    """The HL7 message log, newest first: every message in and out, with its ACK.

    Each message is kept as decoded (its text) and as the exact bytes received
    (the MLLP payload, without <VT> and <FS><CR>). --id N --raw (or --output FILE)
    gives those bytes back unchanged, whatever their character set or NUL bytes.
    In --json every message has "raw", the text as decoded (segments separated
    by \\r, a NUL shown as \\x00), "raw_base64", the exact bytes in base64 (null
    for a message logged before the bytes were kept), and "size" in bytes."""
    settings = _settings()
    try:
        filters = _log_filters(message_type, ack, since)
        rows_limit = _limit(limit)
        if (raw or output is not None) and message_id is None:
            raise ValueError("--raw and --output write one message: say which with --id")
        if raw and output is not None:
            raise ValueError("--raw writes to standard output, --output to a file: give one")
    except ValueError as exc:
        _fail(str(exc), 2)
    _ready(settings)
    from dbserver.hl7log import find_messages, get_message

    if message_id is not None:
        found = get_message(settings, message_id)
        if found is None:
            _fail(f"no message {message_id} in the HL7 log")
        row, data = found
        if raw or output is not None:
            _write_bytes(row, data, output)
        elif as_json:
            _print_json(row)
        else:
            _show_message(row)
        return
    rows, total = find_messages(settings, **filters, control_id=control_id, limit=rows_limit)
    _listing(rows, total, ["id", "at", "direction", "remote", "message_type", "message_control_id", "ack_code",
                           "error"], as_json, "messages")


# --- reports ------------------------------------------------------------------------------------
@report_app.command("add")
def report_add(
    study_uid: str,
    file: Annotated[typer.FileText, typer.Option("--file", help="the report text ('-' for standard input)")],
    author: Annotated[str, typer.Option(help="the reporting radiologist")],
    as_json: JsonOpt = False,
) -> None:
    """Add a final report to a study; it goes to the RIS as ORU^R01."""
    from dbserver.reports import ReportError, add_report
    from services.errors import PacsError

    settings = _settings()
    _ready(settings)
    try:
        result = add_report(settings, study_uid, file.read(), author)
    except (PacsError, ReportError) as exc:
        _fail(str(exc), 2)
    except LookupError as exc:
        _fail(str(exc).strip("'\""))
    if as_json:
        _print_json(result)
        return
    where = result["destination"] or "no RIS destination yet: it waits in the outbox"
    out.print(f"report {result['report_id']} on {study_uid}: final, ORU^R01 {result['message_control_id']} "
              f"queued ({where})")


@report_app.command("list")
def report_list(study_uid: str, as_json: JsonOpt = False) -> None:
    """The reports of a study."""
    from dbserver.reports import list_reports
    from services.errors import PacsError

    settings = _settings()
    _ready(settings)
    try:
        reports = list_reports(settings, study_uid)
    except PacsError as exc:
        _fail(str(exc), 2)
    if as_json:
        _print_json(reports)
        return
    for r in reports:
        out.print(f"report {r['report_id']} ({r['status']}) by {r['author']} at {r['created_at']}, "
                  f"{'sent to the RIS' if r['sent_to_ris'] else 'not yet at the RIS'}")
        out.print(r["text"])


@hl7_app.command("outbox")
def hl7_outbox(
    as_json: JsonOpt = False,
    state: Annotated[Optional[str], typer.Option(help="waiting, sent or cancelled")] = None,
) -> None:
    """HL7 messages queued for the RIS: waiting (with the last error and next attempt) or sent."""
    from dbserver.reports import list_outbox

    settings = _settings()
    _ready(settings)
    _rows(list_outbox(settings, state), ["id", "message_control_id", "message_type", "state", "attempts",
                                         "destination", "next_attempt_at", "sent_at", "last_error"], as_json)


@hl7_app.command("retry")
def hl7_retry(
    messages: Annotated[Optional[list[str]], typer.Argument(help="outbox ids or message control IDs")] = None,
    every: Annotated[bool, typer.Option("--all", help="every waiting message")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Send waiting messages now instead of after their backoff.

    Say, once the RIS is back or its destination fixed. A cancelled message is queued again."""
    from dbserver.reports import OutboxError, retry_outbox

    if bool(messages) == every:
        _fail("name the messages to retry, or give --all", 2)
    settings = _settings()
    _ready(settings)
    try:
        retried = retry_outbox(settings, messages or [])
    except OutboxError as exc:
        _fail(str(exc), 2)
    except LookupError as exc:
        _fail(str(exc).strip("'\""))
    if as_json:
        _print_json({"retried": retried})
        return
    out.print(f"{len(retried)} message(s) due now: {', '.join(retried)}" if retried else "nothing is waiting")


@hl7_app.command("cancel")
def hl7_cancel(
    message: Annotated[str, typer.Argument(help="outbox id or message control ID")],
    reason: Annotated[str, typer.Option(help="why it will not be sent (audited)")],
    as_json: JsonOpt = False,
) -> None:
    """Stop delivering a message the RIS will never take; the report stays, marked not sent."""
    from dbserver.reports import OutboxError, cancel_outbox

    settings = _settings()
    _ready(settings)
    try:
        control_id = cancel_outbox(settings, message, reason)
    except OutboxError as exc:
        _fail(str(exc), 2)
    except LookupError as exc:
        _fail(str(exc).strip("'\""))
    if as_json:
        _print_json({"message_control_id": control_id, "state": "cancelled"})
        return
    out.print(f"{control_id} cancelled: it will not be sent")
