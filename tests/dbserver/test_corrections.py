"""What leaves the cluster: the index's demographics written into a copy of
the stored object, the values replaced kept in Original Attributes Sequence,
and a character set that can carry the new values."""

from __future__ import annotations

import io
import warnings

import pydicom
import pytest
from pydicom.data import get_testdata_file

from dbserver.corrections import outgoing


def _object(charset: str | None) -> bytes:
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))  # ISO_IR 100, JFK IMAGING CENTER
    if charset is None:
        del ds.SpecificCharacterSet
    else:
        ds.SpecificCharacterSet = charset
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


@pytest.mark.parametrize(("charset", "name", "declared"), [
    ("ISO_IR 100", "MÜLLER^JÖRG", "ISO_IR 100"),  # Latin-1 carries it: the object keeps its set
    ("ISO_IR 100", "ŁUKASZ^ΖΩΗ", "ISO_IR 192"),  # it cannot: UTF-8
    (None, "MÜLLER^JÖRG", "ISO_IR 192"),  # none declared is ASCII, not Latin-1
    (None, "MULLER^JORG", None),
])
def test_the_new_values_are_written_in_a_character_set_that_carries_them(
        charset: str | None, name: str, declared: str | None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom warns when it writes '?' for a character
        ds = _read(outgoing(_object(charset), {"validation_status": "verified", "patient_name": name}))
        assert ds.get("SpecificCharacterSet") == declared
        assert str(ds.PatientName) == name
        assert ds.InstitutionName == "JFK IMAGING CENTER"  # the rest unchanged
        replaced = ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]
        assert str(replaced.PatientName) == "CompressedSamples^CT1"
        if declared != (charset if charset else None):
            assert replaced.SpecificCharacterSet == (charset or "")
        else:
            assert "SpecificCharacterSet" not in replaced


def test_a_partial_birth_date_from_the_ris_is_not_written() -> None:
    data = _object("ISO_IR 100")
    study = {"validation_status": "verified", "patient_birth_date": "1980", "patient_id": "RIS-1"}
    ds = _read(outgoing(data, study))
    assert ds.PatientID == "RIS-1"
    assert ds.PatientBirthDate == _read(data).PatientBirthDate
    assert "PatientBirthDate" not in ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]


def test_an_unvalidated_study_leaves_as_received() -> None:
    data = _object("ISO_IR 100")
    assert outgoing(data, {"validation_status": "unverified", "patient_name": "OTHER^NAME"}) == data


def _with_issuer(issuer: str | None) -> bytes:
    ds = _read(_object("ISO_IR 100"))
    if issuer is not None:
        ds.IssuerOfPatientID = issuer
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_the_issuer_of_patient_id_follows_the_patient() -> None:
    verified = {"validation_status": "verified", "patient_id": "1CT1", "issuer_of_patient_id": "HOSP_B"}
    # an A47 into another authority: the object's own issuer is replaced, and kept
    ds = _read(outgoing(_with_issuer("HOSP_A"), {**verified, "patient_id": "NEW-7"}))
    assert (ds.PatientID, ds.IssuerOfPatientID) == ("NEW-7", "HOSP_B")
    replaced = ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]
    assert (replaced.PatientID, replaced.IssuerOfPatientID) == ("1CT1", "HOSP_A")
    # the same ID, another authority named: only the issuer changes
    ds = _read(outgoing(_with_issuer("HOSP_A"), verified))
    assert (ds.PatientID, ds.IssuerOfPatientID) == ("1CT1", "HOSP_B")
    assert "PatientID" not in ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0]
    # a new ID for an object that named no authority: the ID is qualified
    ds = _read(outgoing(_with_issuer(None), {**verified, "patient_id": "NEW-7"}))
    assert ds.IssuerOfPatientID == "HOSP_B"
    assert ds.OriginalAttributesSequence[0].ModifiedAttributesSequence[0].IssuerOfPatientID == ""
    # nothing else differs and the object names no authority: it leaves as stored
    data = _with_issuer(None)
    assert outgoing(data, verified) == data
