"""C-STORE end to end: real modalities (dcmtk's storescu and a pynetdicom
SCU) send a mixed corpus to a running cluster; every instance comes back out
of the archive as it was sent, is indexed with its SHA-256 and a verified
cache copy, and the study list counts it right. PS3.4 Annex B."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import HTJ2KLossless, generate_uid
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config

from tests.cluster import Cluster, dataset_bytes

# Sent with dcmtk's storescu, one transfer syntax per run (tests.cluster).
DCMTK_FILES = [
    "SC_rgb_dcmtk_ebcr_dcmd.dcm",        # explicit VR little endian
    "MR_small_implicit.dcm",             # MR, implicit VR little endian
    "ExplVR_BigEnd.dcm",                 # US, explicit VR big endian, ACR-NEMA style dates
    "SC_rgb_jpeg_dcmtk.dcm",             # JPEG baseline
    "JPEG-lossy.dcm",                    # NM, JPEG extended
    "SC_rgb_jpeg_gdcm.dcm",              # JPEG lossless SV1
    "emri_small_jpeg_ls_lossless.dcm",   # MR multi-frame, JPEG-LS lossless
    "693_J2KR.dcm",                      # CT, JPEG 2000 lossless
    "RG3_J2KI.dcm",                      # CR, JPEG 2000
    "OBXXXX1A_rle.dcm",                  # US, RLE
    "image_dfl.dcm",                     # deflated explicit VR little endian
]
# Sent with pynetdicom, bytes exactly as in the file; plus an HTJ2K object
# made in the test (dcmtk 3.6.7 cannot propose HTJ2K). Several land in
# studies the dcmtk peer also sent to.
PYNETDICOM_FILES = [
    "693_J2KI.dcm",                      # CT, JPEG 2000
    "JPEG2000.dcm",                      # NM, JPEG 2000
    "SC_rgb_small_odd.dcm",              # odd-sized rows, explicit VR little endian
    "SC_rgb_jpeg_lossy_gdcm.dcm",        # JPEG baseline
]
REQUIRED_SYNTAXES = {
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.70",
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5", HTJ2KLossless,
}
STUDY_FIELDS = ("study_instance_uid", "patient_id", "patient_name", "accession_number", "study_date",
                "modalities", "num_series", "num_instances", "stable")
DCMTK_AET = "MODALITY_DCMTK"
PYNETDICOM_AET = "MODALITY_PYND"


@dataclass(frozen=True)
class Item:
    path: Path
    sender: str  # "dcmtk" or "pynetdicom"
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str
    patient_id: str
    patient_name: str
    accession_number: str
    study_date: str


def _item(path: Path, sender: str) -> Item:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return Item(path, sender, str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.StudyInstanceUID),
                str(ds.SeriesInstanceUID), str(ds.file_meta.TransferSyntaxUID),
                str(ds.get("Modality") or ""), str(ds.get("PatientID") or "").strip(),
                str(ds.get("PatientName") or "").strip(),
                str(ds.get("AccessionNumber") or "").strip(), str(ds.get("StudyDate") or "").strip())


def make_htj2k(folder: Path) -> Path:
    """A JPEG 2000 lossless MR image relabelled HTJ2K Lossless (a Part 1
    codestream is a valid Part 15 one), with a SOP Instance UID of its own."""
    ds = pydicom.dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = HTJ2KLossless
    path = folder / "MR_small_htj2k.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def build_corpus(folder: Path) -> list[Item]:
    """Files with distinct SOP Instance UIDs, the first of each kept: pydicom
    test files share UIDs between encodings of the same image, and the
    cluster would rightly treat the later ones as duplicates."""
    folder.mkdir(parents=True, exist_ok=True)
    candidates = [(Path(get_testdata_file(n)), "dcmtk") for n in DCMTK_FILES]
    candidates += [(Path(get_testdata_file(n)), "pynetdicom") for n in PYNETDICOM_FILES]
    candidates.append((make_htj2k(folder), "pynetdicom"))
    seen: set[str] = set()
    corpus = []
    for path, sender in candidates:
        item = _item(path, sender)
        if item.sop_instance_uid in seen:
            continue
        seen.add(item.sop_instance_uid)
        corpus.append(item)
    missing = REQUIRED_SYNTAXES - {i.transfer_syntax_uid for i in corpus}
    assert not missing, f"corpus lacks transfer syntaxes {missing}"
    assert {"CT", "MR", "CR", "US"} <= {i.modality for i in corpus}
    assert any(int(pydicom.dcmread(i.path, stop_before_pixels=True).get("NumberOfFrames") or 1) > 1
               for i in corpus), "no multi-frame object"
    return corpus


def pynetdicom_store(c: Cluster, items: list[Item], aet: str = PYNETDICOM_AET) -> list[int]:
    """Send each file's encoded dataset as is (chunked from the file, never
    decoded) in one association; return the C-STORE statuses."""
    ae = AE(ae_title=aet)
    for sop_class, ts in sorted({(i.sop_class_uid, i.transfer_syntax_uid) for i in items}):
        ae.add_requested_context(sop_class, ts)
    previous = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = ae.associate("127.0.0.1", c.dicom_port, ae_title="PACS")
        assert assoc.is_established, "association with the gateway refused"
        try:
            statuses = []
            for item in items:
                rsp = assoc.send_c_store(item.path)
                assert "Status" in rsp, f"no C-STORE response for {item.path.name}"
                statuses.append(int(rsp.Status))
        finally:
            assoc.release()
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = previous
        ae.shutdown()
    return statuses


def _significant(ds: Dataset) -> dict:
    """Elements that carry meaning: no group lengths, no trailing padding."""
    return {e.tag: e for e in ds if e.tag.element != 0x0000 and e.tag != 0xFFFCFFFC}


def assert_same_dataset(sent: Dataset, got: Dataset, where: str) -> None:
    a, b = _significant(sent), _significant(got)
    assert sorted(a) == sorted(b), f"{where}: elements differ: {sorted(set(a) ^ set(b))}"
    for tag, ea in a.items():
        eb = b[tag]
        if not (tag == 0x7FE00010 and {ea.VR, eb.VR} <= {"OB", "OW"}):  # dcmtk writes encapsulated as OB
            assert ea.VR == eb.VR, f"{where} {tag}: VR {ea.VR} became {eb.VR}"
        if ea.VR == "SQ":
            assert len(ea.value) == len(eb.value), f"{where} {tag}: sequence length differs"
            for n, (ia, ib) in enumerate(zip(ea.value, eb.value)):
                assert_same_dataset(ia, ib, f"{where} {tag}[{n}]")
        else:
            assert ea.value == eb.value, f"{where} {tag} ({ea.keyword}): value differs"


def export_all(c: Cluster, study_uids: set[str], folder: Path) -> dict[str, Path]:
    """``pacs export`` of each study, several at once as admins would."""
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda uid: c.pacs("export", uid, "--out", str(folder / uid)), sorted(study_uids)))
    exported: dict[str, Path] = {}
    for uid in sorted(study_uids):
        for f in (folder / uid).iterdir():
            assert f.name not in exported, f"{f.name} exported twice"
            exported[f.name] = f
    return exported


def index_by_sop(c: Cluster, study_uids: set[str]) -> dict[str, dict]:
    instances = {}
    with ThreadPoolExecutor(4) as pool:
        shown = list(pool.map(lambda uid: c.pacs_json("study", "show", uid), sorted(study_uids)))
    for uid, study in zip(sorted(study_uids), shown):
        assert study["study_instance_uid"] == uid
        for series in study["series"]:
            assert series["num_instances"] == len(series["instances"])
            for inst in series["instances"]:
                instances[inst["sop_instance_uid"]] = inst
    return instances


def normalized_date(value: str) -> str:
    """A DA value as YYYYMMDD; the retired ACR-NEMA form YYYY.MM.DD
    (PS3.5 §6.2, DA) still comes from old modalities."""
    if len(value) == 10 and value[4] == value[7] == ".":
        return value.replace(".", "")
    return value


def expected_studies(corpus: list[Item]) -> dict[str, dict]:
    studies: dict[str, dict] = {}
    for i in corpus:
        s = studies.setdefault(i.study_instance_uid, {"series": set(), "instances": 0, "modalities": set(),
                                                      "patient_id": i.patient_id,
                                                      "patient_name": i.patient_name,
                                                      "accession_number": i.accession_number,
                                                      "study_date": normalized_date(i.study_date)})
        s["series"].add(i.series_instance_uid)
        s["instances"] += 1
        if i.modality:
            s["modalities"].add(i.modality)
    return studies


def test_store_export_index(any_cluster: Cluster, tmp_path: Path) -> None:
    c = any_cluster
    corpus = build_corpus(tmp_path / "corpus")
    by_dcmtk = [i for i in corpus if i.sender == "dcmtk"]
    by_pynetdicom = [i for i in corpus if i.sender == "pynetdicom"]
    assert len(by_dcmtk) == len(DCMTK_FILES) and len(by_pynetdicom) == len(PYNETDICOM_FILES) + 1
    expected = expected_studies(corpus)
    assert len(expected) >= 8

    c.storescu(*(i.path for i in by_dcmtk), aet=DCMTK_AET)
    statuses = pynetdicom_store(c, by_pynetdicom)
    assert statuses == [0x0000] * len(by_pynetdicom), dict(zip((i.path.name for i in by_pynetdicom), statuses))
    status = c.wait_indexed(len(corpus))
    assert status["counts"]["instances"] == len(corpus)
    assert status["counts"]["studies"] == len(expected)

    # --- what comes out is what was sent -------------------------------------
    exported = export_all(c, set(expected), tmp_path / "export")
    assert sorted(exported) == sorted(f"{i.sop_instance_uid}.dcm" for i in corpus)
    for item in corpus:
        out = exported[f"{item.sop_instance_uid}.dcm"]
        meta = pydicom.filereader.read_file_meta_info(out)
        assert meta.TransferSyntaxUID == item.transfer_syntax_uid, item.path.name
        assert meta.MediaStorageSOPInstanceUID == item.sop_instance_uid, item.path.name
        assert meta.MediaStorageSOPClassUID == item.sop_class_uid, item.path.name
        aet = DCMTK_AET if item.sender == "dcmtk" else PYNETDICOM_AET
        assert str(meta.get("SourceApplicationEntityTitle", "")).strip() == aet, item.path.name
        if item.sender == "pynetdicom":
            assert dataset_bytes(out) == dataset_bytes(item.path), f"{item.path.name}: bytes differ"
        else:  # dcmtk re-encodes as it sends: compare element by element
            assert_same_dataset(pydicom.dcmread(item.path), pydicom.dcmread(out), item.path.name)

    # --- indexed with its digest and a verified cache copy ---------------------
    index = index_by_sop(c, set(expected))
    assert sorted(index) == sorted(i.sop_instance_uid for i in corpus)
    for item in corpus:
        inst = index[item.sop_instance_uid]
        data = exported[f"{item.sop_instance_uid}.dcm"].read_bytes()
        assert inst["sha256"] == hashlib.sha256(data).hexdigest(), item.path.name
        assert inst["size_bytes"] == len(data), item.path.name
        assert inst["transfer_syntax_uid"] == item.transfer_syntax_uid, item.path.name
        cache = [cp for cp in inst["copies"] if cp["tier"] == "cache"]
        assert len(cache) == 1, f"{item.path.name}: copies {inst['copies']}"
        assert cache[0]["sha256"] == inst["sha256"] and cache[0]["verified_at"], item.path.name

    # --- the study list --------------------------------------------------------
    studies = {s["study_instance_uid"]: s for s in c.studies()}
    wrong: dict[str, tuple[str, str]] = {}  # asserted last, not to hide the checks below
    assert sorted(studies) == sorted(expected)
    for uid, exp in expected.items():
        s = studies[uid]
        assert all(f in s for f in STUDY_FIELDS), f"missing fields: {set(STUDY_FIELDS) - set(s)}"
        assert s["num_instances"] == exp["instances"], uid
        assert s["num_series"] == len(exp["series"]), uid
        assert sorted(s["modalities"]) == sorted(exp["modalities"]), uid
        assert s["patient_id"] == exp["patient_id"], uid
        assert s["accession_number"] == exp["accession_number"], uid
        for key in ("patient_name", "study_date"):
            if s[key] != exp[key]:
                wrong[f"{uid} {key}"] = (s[key], exp[key])
        assert isinstance(s["stable"], bool)

    # --- an identical re-send is Success and changes nothing --------------------
    resent = by_pynetdicom + [i for i in by_dcmtk if i.study_instance_uid in
                              {p.study_instance_uid for p in by_pynetdicom}]
    touched = {i.study_instance_uid for i in resent}
    before = {uid: (s["num_series"], s["num_instances"], s["last_received_at"]) for uid, s in studies.items()}
    c.storescu(*(i.path for i in resent if i.sender == "dcmtk"), aet=DCMTK_AET)
    statuses = pynetdicom_store(c, by_pynetdicom)
    assert statuses == [0x0000] * len(by_pynetdicom)
    status = c.wait_indexed(len(corpus))
    assert status["counts"]["instances"] == len(corpus)
    assert status["counts"]["studies"] == len(expected)
    after = {s["study_instance_uid"]: (s["num_series"], s["num_instances"], s["last_received_at"])
             for s in c.studies()}
    assert after == before
    shown = index_by_sop(c, touched)
    assert {uid: inst["sha256"] for uid, inst in shown.items()} == {
        i.sop_instance_uid: index[i.sop_instance_uid]["sha256"] for i in corpus if i.study_instance_uid in touched}

    assert not wrong, f"study list shows (got, expected): {wrong}"
