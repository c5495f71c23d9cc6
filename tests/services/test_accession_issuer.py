"""The Issuer of Accession Number Sequence (0008,0051) read from the header
in every encoding the gateway takes: the fast scan (explicit and implicit
little endian, defined and undefined lengths) and pydicom's path (big
endian, deflate)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from services.dicom import read_header
from tests.dicomdata import ct_dataset


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian,
                                DeflatedExplicitVRLittleEndian])
@pytest.mark.parametrize("undefined", [False, True])
def test_issuer_of_accession_number(tmp_path: Path, ts: str, undefined: bool) -> None:
    def header(local: str, universal: str) -> tuple[str, str]:
        ds = ct_dataset("P1", "DOE^JANE", seed=1, AccessionNumber="ACC1", SpecificCharacterSet="ISO_IR 100")
        item = Dataset()
        if local:
            item.LocalNamespaceEntityID = local
        item.UniversalEntityID, item.UniversalEntityIDType = universal, "ISO"
        ds.IssuerOfAccessionNumberSequence = [item]
        ds["IssuerOfAccessionNumberSequence"].is_undefined_length = undefined
        item.is_undefined_length_sequence_item = undefined
        ds.file_meta.TransferSyntaxUID = ts
        ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
        h = read_header((tmp_path / "x.dcm").read_bytes())
        return h.issuer_of_accession_number, h.patient_id

    assert header("HÔP_A", "1.2.3.4") == ("HÔP_A", "P1"), "the local namespace first"
    assert header("", "1.2.3.4") == ("1.2.3.4", "P1"), "else the universal entity ID"


def test_no_sequence(tmp_path: Path) -> None:
    ds = ct_dataset("P1", "DOE^JANE", seed=1, AccessionNumber="ACC1")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(tmp_path / "x.dcm", enforce_file_format=True)
    assert read_header((tmp_path / "x.dcm").read_bytes()).issuer_of_accession_number == ""
