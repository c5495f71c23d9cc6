"""UID checks (PS3.5 §9.1), on their own so that code which only checks a
UID (the CLI, the index) need not load pydicom."""

from __future__ import annotations

import re

from services.errors import InvalidDicomError

_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")
_LENIENT_UID_RE = re.compile(r"^[0-9]+(\.[0-9]+)*$")


def check_uid(value: object, what: str = "UID", strict: bool = False) -> str:
    """Return ``value`` as a UID string, or raise :class:`InvalidDicomError`.

    PS3.5 §9.1: at most 64 characters, digits and dots, no empty component.
    Leading zeros in a component are tolerated unless ``strict`` (real
    modalities send them), but anything that could touch a path or a query
    (``/``, ``..``, spaces, letters) is refused.
    """
    text = str(value or "").strip().rstrip("\x00")
    if not text:
        raise InvalidDicomError(f"missing {what}")
    if len(text) > 64:
        raise InvalidDicomError(f"{what} longer than 64 characters")
    pattern = _UID_RE if strict else _LENIENT_UID_RE
    if not pattern.match(text):
        raise InvalidDicomError(f"{what} {text[:80]!r} is not a valid UID (digits and dots only)")
    return text


def is_valid_uid(value: object) -> bool:
    try:
        check_uid(value)
        return True
    except InvalidDicomError:
        return False
