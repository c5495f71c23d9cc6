"""The ``pacs`` command line against a running cluster: status, nodes,
import and export of folders, and clear errors with non-zero exit codes."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from tests.cluster import Cluster, wait_until

IMPORTED = ["CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm"]  # distinct SOP Instance UIDs, 3 studies


@pytest.fixture(scope="module")
def c(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for the module; each test leaves what others check alone."""
    cluster = Cluster(tmp_path_factory.mktemp("cli"), "embedded")
    try:
        yield cluster.start()
    finally:
        cluster.destroy()


def one_line(text: str) -> str:
    return " ".join(text.split())


def test_status_json(c: Cluster) -> None:
    status = c.status()
    assert set(status["services"]) == {"gateway", "archive", "dbserver", "curator"}
    for name, info in status["services"].items():
        assert info["up"] is True, name
        pids = [p["pid"] for p in info["processes"]]
        assert pids and all(isinstance(p, int) and p > 0 for p in pids), (name, info)
    counts = status["counts"]
    assert set(counts) >= {"patients", "studies", "instances", "archived_objects", "stable_studies"}
    assert all(isinstance(v, int) and v >= 0 for v in counts.values()), counts
    assert set(status["spool"]) == {"files", "bytes"} and set(status["cache"]) == {"files", "bytes"}
    assert "db" in status["queues"]
    # the human form says the same
    text = c.pacs("status").stdout
    assert text.count(" up") >= 3 and "down" not in text, text


def test_node_add_list_remove(c: Cluster) -> None:
    res = c.pacs("node", "add", "CT_SCANNER_1", "10.1.2.3", "104", "--roles", "store,query",
                 "--description", "CT room 1")
    assert "CT_SCANNER_1" in res.stdout
    nodes = {n["ae_title"]: n for n in c.pacs_json("node", "list")}
    assert nodes["CT_SCANNER_1"] == {"ae_title": "CT_SCANNER_1", "host": "10.1.2.3", "port": 104,
                                     "roles": ["query", "store"], "description": "CT room 1",
                                     "issuer_of_patient_id": ""}
    added = c.pacs_json("node", "add", "US_1", "10.1.2.9", "104", "--issuer", "HOSP_A")
    assert {n["ae_title"]: n for n in c.pacs_json("node", "list")}["US_1"] == added
    assert added["issuer_of_patient_id"] == "HOSP_A"
    bad_issuer = c.pacs("node", "add", "US_2", "10.1.2.9", "104", "--issuer", "A^B", check=False)
    assert bad_issuer.returncode == 2 and "issuer" in bad_issuer.stderr
    assert c.pacs_json("node", "remove", "US_1") == {"ae_title": "US_1", "removed": True}

    dup = c.pacs("node", "add", "CT_SCANNER_1", "10.9.9.9", "11112", check=False)
    assert dup.returncode != 0
    assert "CT_SCANNER_1" in one_line(dup.stderr) and "exists" in dup.stderr, dup.stderr
    for port in ("0", "70000"):
        bad = c.pacs("node", "add", "MR_SCANNER_1", "10.1.2.4", port, check=False)
        assert bad.returncode != 0, port
        assert "port" in bad.stderr.lower(), bad.stderr
    bad = c.pacs("node", "add", "MR_SCANNER_1", "10.1.2.4", "abc", check=False)
    assert bad.returncode != 0 and "port" in bad.stderr.lower(), bad.stderr
    too_long = c.pacs("node", "add", "A" * 17, "10.1.2.4", "104", check=False)
    assert too_long.returncode != 0 and "AE title" in too_long.stderr, too_long.stderr
    nodes = {n["ae_title"]: n for n in c.pacs_json("node", "list")}
    assert set(nodes) == {"CT_SCANNER_1"}, "a refused node must not be added"
    assert nodes["CT_SCANNER_1"]["host"] == "10.1.2.3", "a refused duplicate must not change the node"

    c.pacs("node", "remove", "CT_SCANNER_1")
    assert c.pacs_json("node", "list") == []
    again = c.pacs("node", "remove", "CT_SCANNER_1", check=False)
    assert again.returncode != 0 and "CT_SCANNER_1" in again.stderr, again.stderr


def test_import_folder_then_export(c: Cluster, tmp_path: Path) -> None:
    folder = tmp_path / "incoming"
    (folder / "sub").mkdir(parents=True)
    originals = {}
    for n, name in enumerate(IMPORTED):
        dest = (folder / "sub" if n else folder) / name
        shutil.copy(get_testdata_file(name), dest)
        originals[str(pydicom.dcmread(dest, stop_before_pixels=True).SOPInstanceUID)] = dest
    (folder / "notes.txt").write_text("not an image\n" * 20)
    before = c.status()["counts"]

    res = c.pacs("import", str(folder), check=False)
    out = one_line(res.stdout)
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert "3 stored, 0 already stored, 1 failed" in out, res.stdout
    failure = next((line for line in res.stdout.splitlines() if "notes.txt" in line), "")
    assert failure and len(failure.split("notes.txt", 1)[1].strip(" :")) > 5, \
        f"the failed file needs a reason: {res.stdout}"
    assert "importing" in res.stderr and "4/4" in res.stderr, f"no progress shown: {res.stderr!r}"

    status = c.wait_indexed(before["instances"] + 3)
    assert status["counts"]["instances"] == before["instances"] + 3
    assert status["counts"]["studies"] == before["studies"] + 3

    # exported as stored: an imported file comes back byte for byte
    exported = {}
    for uid in {str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in originals.values()}:
        out_dir = tmp_path / "export" / uid
        res = c.pacs("export", uid, "--out", str(out_dir))
        assert "exported 1 instances" in one_line(res.stdout), res.stdout
        exported.update({p.name: p for p in out_dir.iterdir()})
    assert sorted(exported) == sorted(f"{uid}.dcm" for uid in originals)
    for uid, original in originals.items():
        assert exported[f"{uid}.dcm"].read_bytes() == original.read_bytes(), original.name

    # importing the same folder again changes nothing, and says so
    again = c.pacs("import", str(folder), check=False)
    assert again.returncode == 1
    status = c.wait_indexed(before["instances"] + 3)
    assert status["counts"]["instances"] == before["instances"] + 3
    assert status["counts"]["studies"] == before["studies"] + 3
    assert "0 stored, 3 already stored, 1 failed" in one_line(again.stdout), \
        f"a re-imported identical file must be reported as already stored: {again.stdout}"


def test_tables_and_messages_are_never_cut(c: Cluster, tmp_path: Path) -> None:
    """Into a pipe, however narrow the terminal says it is, a table keeps
    every UID, name and count whole (no "…"), and a long message is one
    line: scripts read what they are given."""
    folder = tmp_path / "deep" / ("a-folder-with-a-long-name-" * 4)
    folder.mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct.dcm")
    (folder / "broken.dcm").write_bytes(b"DICM" * 10)
    narrow = dict(c.env, COLUMNS="40")
    res = subprocess.run([sys.executable, "-m", "admin.cli", "import", str(folder)], env=narrow,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 1, (res.stdout, res.stderr)
    assert any(str(folder / "broken.dcm") in line for line in res.stdout.splitlines()), res.stdout
    ct_study = str(pydicom.dcmread(folder / "ct.dcm", stop_before_pixels=True).StudyInstanceUID)
    wait_until(lambda: any(s["study_instance_uid"] == ct_study for s in c.studies()))

    studies = c.studies()
    listed = subprocess.run([sys.executable, "-m", "admin.cli", "study", "list"], env=narrow,
                            capture_output=True, text=True, timeout=60, check=True).stdout
    assert "…" not in listed, listed
    lines = listed.splitlines()
    for study in studies:
        row = next((line for line in lines if study["study_instance_uid"] in line), None)
        assert row is not None, (study["study_instance_uid"], listed)
        assert study["patient_name"] in row and f" {study['num_instances']} " in row, (study, row)


def test_import_only_good_files_exits_zero(c: Cluster, tmp_path: Path) -> None:
    shutil.copy(get_testdata_file("SC_rgb_jpeg_dcmtk.dcm"), tmp_path / "one.dcm")
    res = c.pacs("import", str(tmp_path / "one.dcm"), check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "1 stored" in one_line(res.stdout) or "1 already stored" in one_line(res.stdout), res.stdout
    nothing = c.pacs("import", str(tmp_path / "missing-folder"), check=False)
    assert nothing.returncode != 0 and "missing-folder" in one_line(nothing.stderr), nothing.stderr


@pytest.mark.parametrize("command", ["show", "export"])
def test_unknown_or_malformed_study_uid(c: Cluster, tmp_path: Path, command: str) -> None:
    def run(uid: str) -> subprocess.CompletedProcess:
        args = ["study", "show", uid] if command == "show" else ["export", uid, "--out", str(tmp_path / "x")]
        return c.pacs(*args, check=False)

    unknown = run("1.2.826.0.1.3680043.99.1")
    assert unknown.returncode != 0
    assert "no study 1.2.826.0.1.3680043.99.1" in one_line(unknown.stderr), unknown.stderr
    for bad in ("../../etc/passwd", "1.2.3.abc", "1." + "2" * 70, "1.2..3", "1.2.3;DROP TABLE studies"):
        res = run(bad)
        assert res.returncode != 0, bad
        assert "UID" in res.stderr and "Traceback" not in res.stderr, (bad, res.stderr)
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


@pytest.mark.parametrize(("variable", "value"), [("PACS_DICOM_PORT", "abc"), ("PACS_DICOM_PORT", "70000"),
                                                 ("PACS_DUPLICATE_POLICY", "keep-last"),
                                                 ("PACS_HL7_DEFAULT_CHARSET", "EBCDIC")])
def test_bad_setting_exits_2_naming_it(tmp_path: Path, variable: str, value: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PACS_")}
    env.update(PACS_DATA_DIR=str(tmp_path / "data"), **{variable: value})
    res = subprocess.run([sys.executable, "-m", "admin.cli", "status"], env=env, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert variable in res.stderr and value in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
