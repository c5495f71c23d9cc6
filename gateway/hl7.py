"""The HL7 v2 listener: MLLP on PACS_HL7_PORT, patients and orders from the
HIS/RIS.

Framing (MLLP, HL7 v2.5.1 Appendix C): ``<VT> message <FS><CR>``; a message
may arrive split over many reads, several may come in one read, bytes
outside a frame are dropped, a connection whose first byte is not <VT> (a
bare message) is closed at once, and a frame larger than
PACS_HL7_MAX_MESSAGE_BYTES closes the connection. Each message is parsed
with python-hl7, logged raw (its text, and its bytes as they arrived),
applied in one transaction and answered:

* ``AA`` when applied;
* ``AE`` with an ERR segment when it cannot be (a missing PID-3, an
  unparseable date, no order identifier) — nothing of it is applied;
* ``AR`` when its type is not one we take, or it cannot be parsed.

Taken: ADT^A01/A04/A08/A31 (patient created or updated), ADT^A40 (merge:
the patient of MRG-1 into the one of PID-3, with every study and order),
ADT^A47 (the identifier of MRG-1 becomes PID-3's), ORM^O01 and OMI^O23
(orders: ORC-1 NW new, XO changed, CA cancelled, SC status).
Patient identifiers are scoped by their assigning authority (PID-3.4), else
by the RIS domain of the sending facility (``pacs ris domain add ISSUER
--facility MSH-4``), else by the sending facility itself: the same Patient
ID in two RIS domains is two patients.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import socket
import threading
from datetime import datetime, timedelta, timezone
from typing import Any

import hl7
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from dbserver.models import Hl7Message, Order, RisDomain, utcnow
from dbserver.patients import PatientIdentityError, PatientIdTakenError, change_patient_id, merge_patients
from dbserver.validation import revalidate_accession
from dbserver.worklist import CANCELLED, COMPLETED, SCHEDULED, OrderFields, save_order, save_patient
from services.db import run_in_transaction
from services.mllp import VT, CharsetError, FrameReader, FrameTooLarge, declared_charset, decode_message, escape, frame
from services.net import accept_loop
from services.settings import Settings
from services.uids import is_valid_uid

__all__ = ["FrameReader", "FrameTooLarge", "Hl7Listener", "frame", "handle", "respond", "start"]

LOG = logging.getLogger(__name__)


class Hl7Error(Exception):
    """The message cannot be applied: answered AE with an ERR segment.
    ``location`` is the field (``PID^1^3``), ``code`` an HL7 table 0357 code."""

    def __init__(self, message: str, location: str = "", code: str = "207") -> None:
        super().__init__(message)
        self.location = location
        self.code = code


class Hl7Reject(Exception):
    """The message is not one we take, or cannot be taken now: answered AR
    with an HL7 table 0357 ``code`` (200 unsupported message type, 201
    unsupported event, 100 segment sequence, 102 data type, 207 application
    error)."""

    def __init__(self, message: str, code: str = "200", location: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.location = location


# --- field access -------------------------------------------------------------
def _field(msg: hl7.Message, segment: str, field: int, component: int = 1, repetition: int = 1) -> str:
    """A component of the first such segment, '' when absent."""
    try:
        value = msg.extract_field(segment, 1, field, repetition, component, 1)
    except (KeyError, IndexError, AttributeError, TypeError):
        return ""
    return str(value or "").strip()


def _has_segment(msg: hl7.Message, name: str) -> bool:
    try:
        msg.segment(name)
        return True
    except KeyError:
        return False


def _where(where: str) -> str:
    """'PID-7' → 'PID^1^7' (ERR-2)."""
    return where.replace("-", "^1^")


_TS = re.compile(r"^(\d+)(?:\.\d*)?(?:([+-])(\d{2})(\d{2}))?$")  # digits, fraction, zone


def _date(value: str, where: str) -> str:
    """An HL7 DT/TS as a date: YYYYMMDD, or YYYYMM / YYYY when that is all
    the RIS knows (a birth year); the time of a TS is dropped."""
    if not value:
        return ""
    found = _TS.match(value)
    digits = found.group(1) if found else ""
    size = 8 if len(digits) >= 8 else len(digits)
    try:
        datetime.strptime(digits[:size], {8: "%Y%m%d", 6: "%Y%m", 4: "%Y"}[size])
    except (KeyError, ValueError):
        raise Hl7Error(f"{where}: {value!r} is not a date", _where(where), "102") from None
    return digits[:size]


def _datetime(value: str, where: str) -> datetime | None:
    """An HL7 TS (YYYYMMDD[HH[MM[SS[.S]]]][+/-ZZZZ]) as the wall-clock time of
    this site (what modalities show and the worklist serves), labelled UTC as
    every scheduled time is: a time with a zone offset is converted to the
    local zone of this machine; one without is taken as it is."""
    if not value:
        return None
    found = _TS.match(value)
    text = found.group(1) if found else ""
    fmt = {14: "%Y%m%d%H%M%S", 12: "%Y%m%d%H%M", 10: "%Y%m%d%H", 8: "%Y%m%d"}.get(len(text))
    try:
        if fmt is None:
            raise ValueError(text)
        when = datetime.strptime(text, fmt)
        if found.group(2):
            minutes = int(found.group(3)) * 60 + int(found.group(4))
            offset = timezone(timedelta(minutes=minutes if found.group(2) == "+" else -minutes))
            when = when.replace(tzinfo=offset).astimezone().replace(tzinfo=None)
        return when.replace(tzinfo=timezone.utc)
    except ValueError:
        raise Hl7Error(f"{where}: {value!r} is not a date/time", _where(where), "102") from None


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _text(value: str, limit: int) -> str:
    """Free text (a description) for a DICOM LO/SH: no backslash (DICOM's
    value separator) or control character, cut to ``limit``."""
    return _CONTROL.sub(" ", value.replace("\\", " ")).strip()[:limit]


def _code(value: str, limit: int, where: str) -> str:
    """An identifier (patient ID, accession number, AE title…): refused,
    never cut, when DICOM cannot carry it."""
    if len(value) > limit:
        raise Hl7Error(f"{where}: {value!r} is longer than {limit} characters", _where(where), "102")
    if "\\" in value or _CONTROL.search(value):
        raise Hl7Error(f"{where}: {value!r} holds a backslash or a control character", _where(where), "102")
    return value


def _person_name(msg: hl7.Message, segment: str, field: int) -> str:
    """XPN (family^given^middle^suffix^prefix) as DICOM PN
    (family^given^middle^prefix^suffix). An escaped delimiter inside a part
    (``\\S\\``, ``\\E\\``) becomes a space: PN has no room for '^', '=' or '\\'."""
    parts = [_CONTROL.sub(" ", re.sub(r"[\^=\\\\]", " ", _field(msg, segment, field, c))).strip()
             for c in (1, 2, 3, 5, 4)]
    name = "^".join(parts).rstrip("^")
    if len(name) > 64:  # one PN component group
        raise Hl7Error(f"{segment}-{field}: the name {name!r} is longer than 64 characters",
                       f"{segment}^1^{field}", "102")
    return name


def _hex_escapes(raw: str, encoding: str) -> str:
    """HL7 \\Xhh…\\ escapes (v2.5 §2.7.5) decoded as bytes in the message's
    own character set (python-hl7 would take each byte as a character);
    one that would decode to a delimiter is left as it is."""
    escape_char = raw[6] if len(raw) > 6 else "\\"
    delimiters = set(raw[3:8])
    pattern = re.compile(re.escape(escape_char) + r"X((?:[0-9A-Fa-f]{2})+)" + re.escape(escape_char))

    def decode(match: re.Match[str]) -> str:
        try:
            text = bytes.fromhex(match.group(1)).decode(encoding)
        except (ValueError, LookupError):
            return match.group(0)
        return match.group(0) if set(text) & delimiters or _CONTROL.search(text) else text

    return pattern.sub(decode, raw)


_SEX = {"M": "M", "F": "F", "O": "O", "U": "", "A": "O", "N": ""}


def _repetitions(msg: hl7.Message, segment: str, field: int) -> int:
    try:
        value = msg.segment(segment)[field]
    except (KeyError, IndexError):
        return 0
    # python-hl7 makes a field with components a Field of Repetitions
    return len(value) if isinstance(value, hl7.Field) and value and isinstance(value[0], hl7.Repetition) else 1


def _named_identifier(msg: hl7.Message, segment: str, field: int, issuer: str) -> tuple[str, str]:
    """The patient identifier (CX) of a PID-3 or MRG-1 that may list several
    (MRN~national ID~…): the one whose assigning authority (CX.4) is the
    domain's, else the first of type MR (CX.5), else the first; with the
    authority it names ('' for none)."""
    found = [(_field(msg, segment, field, 1, n), _field(msg, segment, field, 4, n),
              _field(msg, segment, field, 5, n).upper())
             for n in range(1, max(1, _repetitions(msg, segment, field)) + 1)]
    found = [f for f in found if f[0]]
    if not found:
        return "", ""
    chosen = next((f for f in found if issuer and f[1] == issuer), None) or next(
        (f for f in found if f[2] == "MR"), found[0])
    return chosen[0], chosen[1]


def _identifier(msg: hl7.Message, segment: str, field: int, issuer: str) -> tuple[str, str]:
    """The identifier :func:`_named_identifier` chooses, in the authority it
    names, else in the domain's (``issuer``)."""
    value, authority = _named_identifier(msg, segment, field, issuer)
    return value, authority or (issuer if value else "")


def _patient_fields(msg: hl7.Message, issuer: str) -> dict[str, str]:
    patient_id, patient_issuer = _identifier(msg, "PID", 3, issuer)
    if not patient_id:
        raise Hl7Error("PID-3 (patient identifier) is missing", "PID^1^3", "101")
    return {
        "patient_id": _code(patient_id, 64, "PID-3"),
        "issuer_of_patient_id": _code(patient_issuer, 64, "PID-3"),
        "patient_name": _person_name(msg, "PID", 5),
        "patient_birth_date": _date(_field(msg, "PID", 7), "PID-7"),
        "patient_sex": _SEX.get(_field(msg, "PID", 8).upper()[:1], ""),
    }


def domain_issuer(session: Session, facility: str) -> str:
    """The assigning authority of a sending facility's RIS domain (the
    facility itself when no domain names it)."""
    if not facility:
        return ""
    issuer = session.scalar(select(RisDomain.issuer).where(RisDomain.sending_facility == facility))
    return issuer or facility


# --- what each message does -----------------------------------------------------------
def apply_adt(session: Session, msg: hl7.Message, issuer: str, settings: Settings) -> str:
    fields = _patient_fields(msg, issuer)
    save_patient(session, **fields)
    return f"patient {fields['patient_id']} ({fields['issuer_of_patient_id']})"


def _prior(msg: hl7.Message, issuer: str) -> tuple[str, str]:
    prior_id, prior_issuer = _identifier(msg, "MRG", 1, issuer)
    if not prior_id:
        raise Hl7Error("MRG-1 (prior patient identifier) is missing", "MRG^1^1", "101")
    return _code(prior_id, 64, "MRG-1"), _code(prior_issuer, 64, "MRG-1")


def apply_merge(session: Session, msg: hl7.Message, issuer: str, settings: Settings) -> str:
    """ADT^A40: the patient of MRG-1 merges into the patient of PID-3."""
    fields = _patient_fields(msg, issuer)
    prior_id, prior_issuer = _prior(msg, issuer)
    survivor = save_patient(session, **fields)
    try:
        moved = merge_patients(session, survivor, prior_id, prior_issuer, _field(msg, "MSH", 10))
    except PatientIdentityError as exc:
        raise Hl7Error(str(exc), "MRG^1^1", "204") from None
    return f"patient {prior_id} merged into {fields['patient_id']}, {moved} studies moved"


def apply_change_id(session: Session, msg: hl7.Message, issuer: str, settings: Settings) -> str:
    """ADT^A47: the patient of MRG-1 is known as PID-3 from now on. The new
    identifier is in the assigning authority PID-3.4 names (a RIS that
    corrects the authority moves the patient to it), else in MRG-1's. It
    must be free there: an identifier that exists is a merge (ADT^A40),
    refused AE 205. Studies and orders point at the patient, so they follow;
    the identifier that goes away stays a prior one, which later images
    that still carry it are matched on."""
    fields = _patient_fields(msg, issuer)
    prior_id, prior_issuer = _prior(msg, issuer)
    new_id = fields["patient_id"]
    new_issuer = _named_identifier(msg, "PID", 3, issuer)[1] or prior_issuer
    fields["issuer_of_patient_id"] = new_issuer
    try:
        change_patient_id(session, prior_id, prior_issuer, new_id, _field(msg, "MSH", 10), new_issuer)
    except PatientIdTakenError as exc:
        raise Hl7Error(str(exc), "PID^1^3", "205") from None
    except PatientIdentityError as exc:
        raise Hl7Error(str(exc), "MRG^1^1", "204") from None
    save_patient(session, **fields)
    return f"patient {prior_id} ({prior_issuer}) is now {new_id} ({new_issuer})"


_STATUS = {"NW": SCHEDULED, "XO": SCHEDULED, "CA": CANCELLED, "OC": CANCELLED, "DC": CANCELLED}
_ORDER_STATUS = {"CM": COMPLETED, "CA": CANCELLED, "DC": CANCELLED, "IP": SCHEDULED, "SC": SCHEDULED}


def apply_order(session: Session, msg: hl7.Message, issuer: str, settings: Settings) -> str:
    control = _field(msg, "ORC", 1).upper()
    if control not in ("NW", "XO", "CA", "OC", "DC", "SC"):
        raise Hl7Error(f"ORC-1 order control {control!r} is not one of NW, XO, CA, SC", "ORC^1^1", "103")
    patient = _patient_fields(msg, issuer)
    omi = _has_segment(msg, "IPC")
    if omi:
        accession = _field(msg, "IPC", 1)
        procedure_id, study_uid = _field(msg, "IPC", 2), _field(msg, "IPC", 3)
        step_id, modality = _field(msg, "IPC", 4), _field(msg, "IPC", 5)
        station_name, station_ae = _field(msg, "IPC", 7), _field(msg, "IPC", 9)
        start = _datetime(_field(msg, "TQ1", 7), "TQ1-7") if _has_segment(msg, "TQ1") else None
    else:  # ORM^O01 as IHE Scheduled Workflow fills it
        accession = _field(msg, "OBR", 18) or _field(msg, "ORC", 3) or _field(msg, "OBR", 3)
        # IHE RAD-4 carries the Study Instance UID the RIS assigned in ZDS-1
        procedure_id, study_uid = _field(msg, "OBR", 19), _field(msg, "ZDS", 1)
        step_id, modality = _field(msg, "OBR", 20), _field(msg, "OBR", 24)
        station_name, station_ae = "", _field(msg, "OBR", 21)
        start = _datetime(_field(msg, "ORC", 7, 4) or _field(msg, "OBR", 27, 4) or _field(msg, "OBR", 36),
                          "ORC-7")
    if not accession:
        raise Hl7Error("no accession number (OBR-18 or IPC-1)", "IPC^1^1" if omi else "OBR^1^18", "101")
    where = "IPC-1" if omi else "OBR-18"
    accession = _code(accession, 16, where)  # DICOM SH: cut, it would be another order
    if study_uid and not is_valid_uid(study_uid):
        raise Hl7Error(f"{'IPC-3' if omi else 'ZDS-1'}: {study_uid!r} is not a UID",
                       "IPC^1^3" if omi else "ZDS^1^1", "102")
    existing = session.scalar(select(Order).where(Order.accession_number == accession,
                                                  Order.issuer_of_accession_number == issuer))
    if control == "SC":
        status = _ORDER_STATUS.get(_field(msg, "ORC", 5).upper(), SCHEDULED)
    else:
        status = _STATUS[control]
    if existing is None and status != SCHEDULED:
        raise Hl7Error(f"no order {accession} to {'cancel' if status == CANCELLED else 'update'}",
                       "ORC^1^1", "204")
    if existing is not None and control in ("CA", "OC", "DC", "SC"):
        # a cancel or a status change says nothing about the rest of the order
        existing.status = status
        existing.updated_at = utcnow()
    else:
        description = _text(_field(msg, "OBR", 4, 2), 64)
        save_order(session, OrderFields(
            accession_number=accession, issuer_of_accession_number=issuer, study_instance_uid=study_uid,
            placer_order_number=_text(_field(msg, "ORC", 2), 64),
            filler_order_number=_text(_field(msg, "ORC", 3), 64),
            requested_procedure_id=_code(procedure_id, 16, "IPC-2" if omi else "OBR-19"),
            requested_procedure_description=description,
            procedure_code_value=_code(_field(msg, "OBR", 4, 1), 16, "OBR-4"),
            procedure_coding_scheme=_code(_field(msg, "OBR", 4, 3), 16, "OBR-4"),
            scheduled_procedure_step_id=_code(step_id, 16, "IPC-4" if omi else "OBR-20"),
            scheduled_procedure_step_description=description,
            modality=_code(modality, 16, "IPC-5" if omi else "OBR-24"),
            scheduled_station_ae_title=_code(station_ae, 16, "IPC-9" if omi else "OBR-21"),
            scheduled_station_name=_text(station_name, 16), scheduled_start=start,
            referring_physician_name=_person_name(msg, "ORC", 12) or _person_name(msg, "OBR", 16),
            status=status, **patient))
    if status == SCHEDULED:  # images that came before their order are checked now
        late = revalidate_accession(session, accession, settings)
        if late:
            return f"order {accession}: {status}; studies validated: {late}"
    return f"order {accession}: {status}"


HANDLERS = {
    ("ADT", "A01"): apply_adt, ("ADT", "A04"): apply_adt, ("ADT", "A08"): apply_adt,
    ("ADT", "A31"): apply_adt, ("ADT", "A40"): apply_merge, ("ADT", "A47"): apply_change_id,
    ("ORM", "O01"): apply_order, ("OMI", "O23"): apply_order,
}


# --- one message in, one ACK out ----------------------------------------------------------
def _log(session: Session, raw: str, remote: str, msg: hl7.Message | None, ack: str, error: str,
         data: bytes | None) -> None:
    """One row of the message log: the text as read (for reading and
    searching) and ``data``, the bytes as they arrived (the MLLP payload),
    which a character set misread or a NUL would otherwise lose."""

    def head(field: int, limit: int, component: int = 1) -> str:
        return _field(msg, "MSH", field, component)[:limit].replace("\x00", "") if msg is not None else ""

    session.add(Hl7Message(
        at=utcnow(), direction="in", remote=remote[:255], ack_code=ack,
        raw=raw.replace("\x00", "\\x00"), raw_bytes=data,  # PostgreSQL text holds no NUL, bytea does
        error=error.replace("\x00", "")[:2000],
        message_type=f"{head(9, 15)}^{head(9, 15, 2)}" if msg is not None else "",
        message_control_id=head(10, 64), sending_application=head(3, 255), sending_facility=head(4, 255)))


# HL7 table 0357, message error condition codes
ERROR_CODES = {
    "100": "Segment sequence error", "101": "Required field missing", "102": "Data type error",
    "103": "Table value not found", "200": "Unsupported message type", "201": "Unsupported event code",
    "202": "Unsupported processing id", "203": "Unsupported version id", "204": "Unknown key identifier",
    "205": "Duplicate key identifier", "206": "Application record locked", "207": "Application internal error",
}


def _version(text: str) -> tuple[int, ...]:
    """'2.3.1' → (2, 3, 1); anything unreadable counts as 2.5."""
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return (2, 5)


def _ack(msg: hl7.Message | None, code: str, text: str = "", error: Hl7Error | None = None,
         charset: str = "") -> str:
    """The ACK in the sender's own HL7 version: MSH-9 has its third component
    (message structure) from v2.3.1 on; before v2.5 the error is in ERR-1
    (segment^sequence^field^code), from v2.5 on in ERR-2 to ERR-4 and ERR-8."""
    now = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    control = hl7.generate_message_control_id()
    version = (_field(msg, "MSH", 12) if msg is not None else "") or "2.5"
    if msg is not None:
        trigger = _field(msg, "MSH", 9, 2)
        message_type = f"ACK^{trigger}" + ("^ACK" if _version(version) >= (2, 3, 1) else "")
        head = (f"MSH|^~\\&|{_field(msg, 'MSH', 5)}|{_field(msg, 'MSH', 6)}|{_field(msg, 'MSH', 3)}|"
                f"{_field(msg, 'MSH', 4)}|{now}||{message_type}|{control}|P|{version}"
                + (f"||||||{charset}" if charset else ""))
        acked = _field(msg, "MSH", 10)
    else:
        head = f"MSH|^~\\&|PACS||||{now}||ACK|{control}|P|2.5"
        acked = ""
    text = escape(text)
    segments = [head, f"MSA|{code}|{acked}|{text[:80]}"]
    if code != "AA":
        location = error.location if error else ""
        err_code = error.code if error else "200"
        err_text = ERROR_CODES.get(err_code, "Error")
        legacy = ""  # ERR-1, ELD: segment^sequence^field^code&text&table
        if _version(version) < (2, 5):
            where = ((location or "MSH^1").split("^") + ["", "", ""])[:3]
            legacy = "^".join([*where, f"{err_code}&{err_text}&HL70357"])
        segments.append(f"ERR|{legacy}|{location}|{err_code}^{err_text}^HL70357|E||||{text[:250]}")
    return "\r".join(segments) + "\r"


def _check_delimiters(raw: str) -> None:
    """MSH-1 and MSH-2 (v2.5 §2.5.4): a field separator and four (v2.7: five)
    distinct encoding characters, none a letter, digit or blank."""
    separator = raw[3]
    encoding = raw[4:].split(separator, 1)[0]
    chars = separator + encoding
    if (len(encoding) not in (4, 5) or len(set(chars)) != len(chars)
            or any(c.isalnum() or c.isspace() for c in chars)):
        raise Hl7Reject(f"MSH-1/MSH-2 delimiters {chars!r} are not a field separator and four distinct "
                        "encoding characters", "102", "MSH^1^2")


def handle(raw_bytes: bytes, settings: Settings, remote: str = "") -> str:
    """Apply one message; return the ACK to send."""
    return respond(raw_bytes, settings, remote)[0]


def respond(raw_bytes: bytes, settings: Settings, remote: str = "") -> tuple[str, str]:
    """Apply one message; return the ACK and the codec to send it in (that
    of the message: MSH-18, else PACS_HL7_DEFAULT_CHARSET, else UTF-8).
    Every message gets an answer: AA, AE (its content), or AR (its type, its
    form, or the index unreachable: the RIS sends it again)."""
    msg: hl7.Message | None = None
    charset = ""
    raw = ""
    encoding = "utf-8"
    try:
        try:
            raw, encoding = decode_message(raw_bytes, settings.hl7_default_charset)
            charset = declared_charset(raw_bytes)
        except CharsetError as exc:
            raw, encoding = raw_bytes.decode("latin-1"), "utf-8"
            raise Hl7Reject(str(exc), "102", "MSH^1^18") from None
        finally:
            raw = raw.replace("\r\n", "\r").replace("\n", "\r").strip("\r")
        if not raw.startswith("MSH") or len(raw) < 8:
            raise Hl7Reject("the message does not start with an MSH segment", "100", "MSH^1")
        _check_delimiters(raw)
        if "\x00" in raw:
            raise Hl7Reject("the message holds NUL bytes", "102")
        try:
            msg = hl7.parse(_hex_escapes(raw, encoding))
        except Exception as exc:  # noqa: BLE001 - python-hl7 raises several kinds
            raise Hl7Reject(f"unparseable message: {exc}", "102") from exc
        kind = (_field(msg, "MSH", 9, 1).upper(), _field(msg, "MSH", 9, 2).upper())
        handler = HANDLERS.get(kind)
        if handler is None:
            known = any(k[0] == kind[0] for k in HANDLERS)
            raise Hl7Reject(f"message type {'^'.join(kind)} is not taken here", "201" if known else "200",
                            "MSH^1^9")
        if not _field(msg, "MSH", 10):
            raise Hl7Reject("MSH-10 (message control ID) is missing", "101", "MSH^1^10")
        facility = _field(msg, "MSH", 4)
        parsed = msg

        def work(session: Session) -> str:
            what = handler(session, parsed, domain_issuer(session, facility), settings)
            _log(session, raw, remote, parsed, "AA", "", raw_bytes)
            return what

        what = run_in_transaction(work, settings)
        LOG.info("HL7 %s from %s applied: %s", "^".join(kind), remote, what)
        return _ack(msg, "AA", charset=charset), encoding
    except Hl7Reject as exc:
        code, error, text = "AR", Hl7Error(str(exc), exc.location, exc.code), str(exc)
        if msg is None:
            msg = _parse_quietly(raw)  # the header, to answer its MSH-10 when it can be read
    except Hl7Error as exc:
        code, error, text = "AE", exc, str(exc)
    except ValueError as exc:
        code, error, text = "AE", Hl7Error(str(exc)), str(exc)
    except (OperationalError, InterfaceError) as exc:  # the index down: the RIS sends it again
        LOG.error("HL7 message from %s not applied, the index is unreachable: %s", remote, exc)
        text = "the index is unreachable; send the message again"
        code, error = "AR", Hl7Error(text, "", "207")
    except DBAPIError as exc:  # a value the index refuses (a constraint): nothing was applied
        LOG.warning("HL7 message from %s refused by the index: %s", remote, exc)
        text = f"a value is not valid here: {str(exc.orig or exc).splitlines()[0][:160]}"
        code, error = "AE", Hl7Error(text, "", "207")
    except Exception as exc:  # noqa: BLE001 - every message gets an answer
        LOG.exception("HL7 message from %s failed", remote)
        text = f"internal error: {exc.__class__.__name__}: {exc}"
        code, error = "AE", Hl7Error(f"internal error: {exc.__class__.__name__}", "", "207")
    LOG.warning("HL7 message from %s answered %s: %s", remote, code, text)
    log_rejected(settings, raw, remote, msg, code, text, raw_bytes)
    return _ack(msg, code, text, error, charset=charset), encoding


_SERVICE_LOG_BYTES = 64 * 1024  # of a message the message log could not take


def log_rejected(settings: Settings, raw: str, remote: str, msg: hl7.Message | None, code: str,
                 text: str, data: bytes | None = None) -> None:
    """Write a message that was not applied to the message log; when even
    that fails (the index unreachable), the service log has it: who sent
    what (MSH-9, MSH-10), its size and SHA-256, its text to read, and its
    bytes in base64 to get back exactly (the first 64 KB)."""
    try:
        run_in_transaction(lambda s: _log(s, raw, remote, msg, code, text, data), settings)
    except SQLAlchemyError as exc:
        data = raw.encode("utf-8", errors="replace") if data is None else data
        kind = f"{_field(msg, 'MSH', 9, 1)}^{_field(msg, 'MSH', 9, 2)}" if msg is not None else "?"
        control = _field(msg, "MSH", 10) if msg is not None else "?"
        cut = f", first {_SERVICE_LOG_BYTES} shown" if len(data) > _SERVICE_LOG_BYTES else ""
        LOG.error("HL7 message %s %s from %s (answered %s) not logged: %s; %d bytes, sha256 %s%s; text: %r; "
                  "bytes (base64): %s", kind, control, remote, code or "nothing", exc, len(data),
                  hashlib.sha256(data).hexdigest(), cut, raw[:4000],
                  base64.b64encode(data[:_SERVICE_LOG_BYTES]).decode("ascii"))


def _parse_quietly(raw: str) -> hl7.Message | None:
    try:
        if not raw.startswith("MSH"):
            return None
        _check_delimiters(raw)
        return hl7.parse(raw)
    except Exception:  # noqa: BLE001 - an answer without MSH-10 then
        return None


# --- the listener ---------------------------------------------------------------------------
_SHOWN = 256  # bytes of an unframed connection written to the service log


def _framed(data: bytes, remote: str) -> bool:
    """Whether a connection's first bytes open an MLLP frame. A peer that
    sends a bare message (no <VT>) would wait for an answer that never comes
    while we wait for a frame that never starts, until the idle timeout: it
    is told at once, by the connection closing, and the service log says
    what it sent (the first bytes only)."""
    if data[0] == VT:
        return True
    LOG.warning("HL7 connection from %s closed: its first byte is %r, not MLLP's start block 0x0B (an "
                "unframed message?); it began %r%s", remote, data[:1], data[:_SHOWN],
                "…" if len(data) > _SHOWN else "")
    return False


class Hl7Listener:
    def __init__(self, settings: Settings, sock: socket.socket | None = None) -> None:
        self.settings = settings
        self.sock = sock or socket.create_server((settings.dicom_host, settings.hl7_port), backlog=64)
        self._stop = threading.Event()

    def serve_forever(self) -> None:
        accept_loop(self.sock, self._stop, self._start)

    def _start(self, conn: socket.socket, address: Any) -> None:
        threading.Thread(target=self._serve, args=(conn, address), daemon=True,
                         name=f"hl7-{address[0]}:{address[1]}").start()

    def _serve(self, conn: socket.socket, address: Any) -> None:
        remote = f"{address[0]}:{address[1]}"
        reader = FrameReader(self.settings.hl7_max_message_bytes)
        conn.settimeout(self.settings.hl7_idle_seconds)
        try:
            first = True
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                if first and not _framed(data, remote):
                    return
                first = False
                for message in reader.feed(data):
                    ack, encoding = respond(message, self.settings, remote)
                    conn.sendall(frame(ack, encoding))
        except FrameTooLarge as exc:
            LOG.warning("HL7 connection from %s closed: %s", remote, exc)
            head = bytes(reader.buf[1:1 + 65536])  # its first 64 KB, as they arrived
            start = head.decode("latin-1")
            header = start.replace("\n", "\r").split("\r", 1)[0]
            log_rejected(self.settings, start + "\r[… cut: the message is longer than that]", remote,
                         _parse_quietly(header), "", f"{exc}: not read, connection closed (its first "
                         f"{len(head)} bytes kept)", head)
        except (TimeoutError, OSError) as exc:
            LOG.info("HL7 connection from %s ended: %s", remote, exc)
        except Exception:  # noqa: BLE001 - one bad connection never stops the listener
            LOG.exception("HL7 connection from %s failed", remote)
        finally:
            conn.close()

    def shutdown(self) -> None:
        self._stop.set()


def start(settings: Settings) -> Hl7Listener:
    listener = Hl7Listener(settings)
    threading.Thread(target=listener.serve_forever, name="hl7-listener", daemon=True).start()
    LOG.info("HL7 MLLP listener on %s:%s", settings.dicom_host, settings.hl7_port)
    return listener
