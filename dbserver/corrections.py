"""Demographics corrections applied to objects as they leave the cluster.

Stored objects stay exactly as received. For a study whose demographics the
RIS owns (verified against its order, or reconciled to one), the patient
and accession values of the index are written into every object that
leaves (export, and later C-MOVE/C-GET/WADO), and the values they replace
are kept in the Original Attributes Sequence (PS3.3 C.12.1.1.9), so an A08
rename, an A40 merge or a reconciliation reaches studies already stored without
rewriting archived files.
"""

from __future__ import annotations

import io
from datetime import datetime, timezone
from typing import Any

import pydicom
import pydicom.charset
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from dbserver.validation import ACCEPTED, COERCED, HIDDEN, RECONCILED, VERIFIED

RIS_OWNED = (VERIFIED, RECONCILED, COERCED)
AS_RECEIVED = (*HIDDEN, ACCEPTED)  # decided, or to be decided, on the images' own values
_KEYS = {"PatientName": "patient_name", "PatientID": "patient_id", "PatientBirthDate": "patient_birth_date",
         "PatientSex": "patient_sex", "AccessionNumber": "accession_number"}


def _fits(ds: Dataset, values: list[str]) -> bool:
    """Whether the object's own character set can carry these values."""
    declared = ds.get("SpecificCharacterSet")
    # none declared: the default repertoire, ASCII (pydicom would read Latin-1)
    charsets = pydicom.charset.convert_encodings(declared) if declared else ["ascii"]

    def one(value: str) -> bool:
        for codec in charsets:
            try:
                value.encode(codec)
                return True
            except (UnicodeEncodeError, LookupError):
                continue
        return False

    return all(one(v) for v in values)


def outgoing(data: bytes, study: dict[str, Any]) -> bytes:
    """The object as it should leave: ``data`` itself, or a copy carrying
    the index's demographics and the replaced values. They apply when the
    study's order vouches for them, or when its patient is one the HIS/RIS
    manages (ADT: an A08 rename, an A40 merge)."""
    status = study.get("validation_status")
    if status not in RIS_OWNED and not (study.get("patient_from_ris") and status not in AS_RECEIVED):
        return data
    ds = pydicom.dcmread(io.BytesIO(data))
    changes: dict[str, str] = {}
    for keyword, key in _KEYS.items():
        want = str(study.get(key) or "")
        if keyword == "PatientBirthDate" and len(want) != 8:
            continue  # a birth year or month from the RIS is no DICOM date
        if want and str(ds.get(keyword, "") or "") != want:
            changes[keyword] = want
    # the Patient ID's assigning authority: stated with a new Patient ID (a
    # merge, an identifier change, a reconciliation), replaced where the
    # object names another (an A47 into another authority); an object
    # without one keeps its Patient ID unqualified when that is unchanged
    issuer, held = str(study.get("issuer_of_patient_id") or ""), str(ds.get("IssuerOfPatientID", "") or "")
    if issuer and held != issuer and (held or "PatientID" in changes):
        changes["IssuerOfPatientID"] = issuer
    if not changes:
        return data
    replaced = Dataset()
    if not _fits(ds, list(changes.values())):
        # UTF-8 (ISO_IR 192) for values the object's character set cannot
        # carry: every text value is decoded first, so the rest is written
        # again, unchanged, in UTF-8; the character set replaced is kept
        ds.decode()
        replaced.SpecificCharacterSet = ds.get("SpecificCharacterSet", "")
        ds.SpecificCharacterSet = "ISO_IR 192"
    for keyword, want in changes.items():
        setattr(replaced, keyword, str(ds.get(keyword, "") or ""))
        setattr(ds, keyword, want)
    item = Dataset()
    item.ModifiedAttributesSequence = Sequence([replaced])
    item.AttributeModificationDateTime = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    item.ModifyingSystem = "PACS Cluster"
    item.SourceOfPreviousValues = ""
    item.ReasonForTheAttributeModification = "COERCE"
    history = list(ds.get("OriginalAttributesSequence", []))
    ds.OriginalAttributesSequence = Sequence([*history, item])
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
