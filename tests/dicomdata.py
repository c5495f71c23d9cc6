"""Synthetic DICOM data for the tests: a small CT image, its encoding, and
the Part 10 file a peer sends it from::

    ds = ct_dataset(patient_id="P-1", seed=7, ImageComments="first", InstanceNumber=None)
    sent = write_part10(tmp_path / "p1.dcm", ds)  # what a C-STORE of that file carries

The File Meta is built by :func:`services.dicom.file_meta_bytes`, as the
gateway writes it on receipt, so it carries this project's implementation
class UID.
"""

from __future__ import annotations

from pathlib import Path

import data_store
import numpy as np
import pydicom.data
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from services.dicom import file_meta_bytes

__all__ = ["ct_dataset", "encode", "sample_files", "write_part10"]


def sample_files(pattern: str = "*") -> list[str]:
    """pydicom's own test files and pydicom-data's, sorted, listed straight
    from the installed packages (``pydicom.data.get_sample_files`` would
    also try to download the ones it lacks, slowly and differently from one
    run to the next)."""
    own = Path(pydicom.data.__file__).parent / "test_files"
    extra = Path(data_store.__file__).parent / "data"
    return sorted(str(p) for p in [*own.glob(pattern), *extra.glob(pattern)] if p.is_file())


def ct_dataset(patient_id: str = "TEST-1", patient_name: str = "Test^Patient",
               seed: int | np.random.Generator | None = None, **attrs: object) -> Dataset:
    """A 64x64 CT image, 16 bits allocated and 12 stored, with fresh SOP
    Instance, Study and Series UIDs.

    ``seed`` makes the pixel data deterministic: an int starts a new
    generator (the same int gives the same pixels); a
    :class:`numpy.random.Generator` is drawn from, so images made from one
    shared generator differ but the sequence is reproducible; None gives
    random pixels. ``attrs`` set keywords after the defaults (None deletes
    the keyword, e.g. ``SOPInstanceUID=None``). ``file_meta`` names Explicit
    VR Little Endian, which pynetdicom needs to send the dataset itself.
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.Modality = "CT"
    ds.InstanceNumber = 1
    ds.Rows = ds.Columns = 64
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = np.random.default_rng(seed).integers(0, 4096, 64 * 64, dtype=np.uint16).tobytes()
    for keyword, value in attrs.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def encode(ds: Dataset, transfer_syntax: str = ExplicitVRLittleEndian) -> bytes:
    """``ds`` encoded little endian in ``transfer_syntax`` (explicit or
    implicit VR), without File Meta: the dataset as a C-STORE carries it."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = transfer_syntax == ImplicitVRLittleEndian
    write_dataset(fp, ds)
    return fp.getvalue()


def write_part10(path: Path, ds: Dataset, data: bytes | None = None, *,
                 sop_instance_uid: str | None = None) -> bytes:
    """Write a Part 10 file (preamble, File Meta, then the dataset, Explicit
    VR Little Endian) to ``path``; return the dataset bytes written after the
    File Meta, which is what a C-STORE of the file sends.

    The body is ``encode(ds)``, or ``data`` exactly when given (possibly
    malformed). The File Meta names ``ds``'s SOP Class and SOP Instance UIDs,
    or ``sop_instance_uid`` when given: pynetdicom takes the C-STORE request
    UIDs from there, so a file can announce a UID its dataset lacks or
    contradicts.
    """
    body = encode(ds) if data is None else data
    uid = str(ds.SOPInstanceUID) if sop_instance_uid is None else sop_instance_uid
    path.write_bytes(file_meta_bytes(str(ds.SOPClassUID), uid, ExplicitVRLittleEndian) + body)
    return body
