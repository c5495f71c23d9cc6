"""A second, different object under a SOP Instance UID already stored,
end to end, for each ``PACS_DUPLICATE_POLICY``: what the sender is told,
what export returns, and that the losing object is kept with a verified
archive copy (store and remember; DESIGN.md, invariants)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config

from services.dicom import file_meta_end
from tests.cluster import Cluster, dataset_bytes
from tests.dicomdata import ct_dataset, write_part10

SUCCESS = 0x0000
DUPLICATE_SOP_INSTANCE = 0x0111
SETTLE_TIMEOUT = 15.0


def store(port: int, path: Path) -> tuple[int | None, str]:
    """One C-STORE of a file's dataset, sent as is, on its own association."""
    ae = AE(ae_title="DUPSCU")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="PACS")
    assert assoc.is_established
    try:
        rsp = assoc.send_c_store(path)
    finally:
        assoc.release()
    if "Status" not in rsp:
        return None, ""
    return int(rsp.Status), str(rsp.get("ErrorComment", ""))


def state(c: Cluster, uid: str) -> dict[str, Any]:
    """What the index holds for this SOP Instance UID."""
    return {
        "instances": c.sql("SELECT sha256 FROM instances WHERE sop_instance_uid = ?", uid),
        "superseded": c.sql("SELECT sha256, reason FROM superseded_objects WHERE sop_instance_uid = ?", uid),
        "copies": c.sql("SELECT sha256, locator FROM object_copies WHERE tier = 'cache' "
                           "AND verified_at IS NOT NULL ORDER BY id"),
        "spool": sorted(p.name for p in (c.data_dir / "spool").rglob("*.dcm")),
    }


def wait_for(c: Cluster, uid: str, done: Any, what: str, timeout: float = SETTLE_TIMEOUT) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        s = state(c, uid)
        if done(s):
            return s
        assert time.monotonic() < deadline, f"{what} within {timeout:.0f} s; index now: {s}"
        time.sleep(0.2)


def exported(c: Cluster, study_uid: str, sop_uid: str, out: Path) -> bytes:
    c.pacs("export", study_uid, "--out", str(out))
    return dataset_bytes(out / f"{sop_uid}.dcm")


def dataset_bytes_of(data: bytes) -> bytes:
    """The encoded dataset of a Part 10 file held in memory."""
    return data[file_meta_end(data):]


def cached(c: Cluster, sha: str, locator: str) -> bytes:
    data = (c.data_dir / "archive" / "cache" / locator).read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha, f"the cache copy of {sha[:12]}… does not match its SHA-256"
    return data


@pytest.mark.parametrize(("policy", "status_second", "winner"), [
    ("keep-first", SUCCESS, "first"),
    ("overwrite", SUCCESS, "second"),
    ("reject", DUPLICATE_SOP_INSTANCE, "first"),
], ids=["keep-first", "overwrite", "reject"])
def test_different_object_same_sop_instance_uid(make_cluster: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                policy: str, status_second: int, winner: str) -> None:
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send the file's bytes as they are
    c: Cluster = make_cluster("embedded", PACS_DUPLICATE_POLICY=policy)
    c.start()
    uids = {"sop": generate_uid(), "study": generate_uid(), "series": generate_uid()}
    same_uids = {"SOPInstanceUID": uids["sop"], "StudyInstanceUID": uids["study"],
                 "SeriesInstanceUID": uids["series"]}
    first = ct_dataset("DUP-1", "Duplicate^Test", seed=1, ImageComments="first object", **same_uids)
    second = ct_dataset("DUP-1", "Duplicate^Test", seed=2, ImageComments="second object", **same_uids)
    sent = {
        "first": write_part10(tmp_path / "first.dcm", first),
        "second": write_part10(tmp_path / "second.dcm", second),
    }
    loser = "second" if winner == "first" else "first"

    assert store(c.dicom_port, tmp_path / "first.dcm") == (SUCCESS, "")
    c.wait_indexed(1, timeout=SETTLE_TIMEOUT)

    status, comment = store(c.dicom_port, tmp_path / "second.dcm")
    assert status == status_second, f"0x{status or 0:04X} {comment!r}"
    if status_second != SUCCESS:
        assert comment.strip(), "a refused duplicate needs an ErrorComment"
        assert len(comment) <= 64

    s = wait_for(c, uids["sop"], lambda s: len(s["superseded"]) == 1 and len(s["copies"]) == 2 and not s["spool"],
                 f"policy {policy}: the {loser} object is not kept aside (superseded, with a verified archive copy)")

    # the instance is represented by the winner; export returns it bit-exact
    assert len(s["instances"]) == 1
    assert exported(c, uids["study"], uids["sop"], tmp_path / "export") == sent[winner], (
        f"policy {policy}: export must return the {winner} object")
    copies = dict(s["copies"])
    (current_sha,) = s["instances"][0]
    assert dataset_bytes_of(cached(c, current_sha, copies[current_sha])) == sent[winner]

    # the loser is kept: superseded, with a verified copy holding what was sent
    loser_sha, reason = s["superseded"][0]
    assert loser_sha != current_sha
    assert reason == {"keep-first": "duplicate-kept-first", "overwrite": "overwritten",
                      "reject": "duplicate-rejected"}[policy]
    assert loser_sha in copies, "the losing object has no verified archive copy"
    assert dataset_bytes_of(cached(c, loser_sha, copies[loser_sha])) == sent[loser]

    # an identical re-send of the current object: Success, nothing changes
    assert store(c.dicom_port, tmp_path / f"{winner}.dcm") == (SUCCESS, "")
    time.sleep(2.0)
    assert state(c, uids["sop"]) == s
    counts = c.status()["counts"]
    assert (counts["instances"], counts["archived_objects"]) == (1, 2), counts
    shown = c.pacs_json("study", "show", uids["study"])
    (inst,) = [i for series in shown["series"] for i in series["instances"]]
    assert inst["sha256"] == current_sha
    assert [(cp["tier"], bool(cp["verified_at"])) for cp in inst["copies"]] == [("cache", True)]
    assert exported(c, uids["study"], uids["sop"], tmp_path / "export-again") == sent[winner]
