"""The curator under ``pacs up``: a study sent with dcmtk storescu gets its
wavelet files, thumbnails and series metadata without any command, each
wavelet file decoding to exactly the pixels pydicom decodes from the
archived object; objects without pixel data (RT plan, SR, encapsulated PDF)
are skipped and recorded, pixels the codec cannot hold exactly (corrupt,
values above Bits Stored, more than 16 bits stored) fail for that instance
only; a killed curator loses nothing; the web cache
keeps to its size limit and rebuilds what it lost."""

from __future__ import annotations

import gzip
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import EncapsulatedPDFStorage, generate_uid

from curator import wavelet
from tests.cluster import Cluster, wait_until
from tests.dicomdata import ct_dataset, write_part10

REAL = ["CT_small.dcm", "MR_small.dcm", "US1_J2KR.dcm", "emri_small.dcm", "SC_rgb_rle.dcm", "JPEG2000.dcm",
        "MR2_J2KR.dcm", "rtplan.dcm", "test-SR.dcm"]
NO_PIXELS = {"rtplan.dcm", "test-SR.dcm", "encapsulated.pdf.dcm"}
FAILING = {"truncated_j2k.dcm", "short_pixels.dcm", "bits_stored_mismatch.dcm", "bits_above_bits_stored.dcm",
           "rtdose_1frame.dcm"}


def _study_files(folder: Path) -> tuple[str, dict[str, str]]:
    """Real test images made one study (new UIDs, transfer syntaxes kept),
    plus an encapsulated PDF, a truncated JPEG 2000, a short native pixel
    data, Bits Stored beyond Bits Allocated, stored values above Bits Stored
    and 32 bits stored; returns the study UID and SOP Instance UID -> file
    name."""
    folder.mkdir(parents=True, exist_ok=True)
    study = generate_uid()
    names: dict[str, str] = {}
    for n, name in enumerate(REAL):
        ds = pydicom.dcmread(get_testdata_file(name))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.PatientID, ds.SeriesNumber = "CUR-1", n + 1
        ds.save_as(folder / name)
        names[ds.SOPInstanceUID] = name
    broken = pydicom.dcmread(get_testdata_file("MR_small_jp2klossless.dcm"))
    frame = next(generate_frames(broken.PixelData, number_of_frames=1))
    broken.PixelData = encapsulate([frame[: len(frame) // 2]])
    broken.StudyInstanceUID, broken.SeriesInstanceUID = study, generate_uid()
    broken.SOPInstanceUID = broken.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    broken.PatientID = "CUR-1"
    broken.save_as(folder / "truncated_j2k.dcm")
    names[broken.SOPInstanceUID] = "truncated_j2k.dcm"
    short = ct_dataset("CUR-1", seed=3, StudyInstanceUID=study, Rows=128)  # 64x64 pixels for 128 rows
    write_part10(folder / "short_pixels.dcm", short)
    names[str(short.SOPInstanceUID)] = "short_pixels.dcm"
    bits = ct_dataset("CUR-1", seed=4, StudyInstanceUID=study, BitsStored=20, HighBit=19)  # 16 allocated
    write_part10(folder / "bits_stored_mismatch.dcm", bits)
    names[str(bits.SOPInstanceUID)] = "bits_stored_mismatch.dcm"
    for name, attrs in (("bits_above_bits_stored.dcm", {"BitsStored": 10, "HighBit": 9}),  # values up to 2191
                        ("rtdose_1frame.dcm", {})):
        ds = pydicom.dcmread(get_testdata_file(name.replace("bits_above_bits_stored", "CT_small")))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        for keyword, value in attrs.items():
            setattr(ds, keyword, value)
        ds.save_as(folder / name)
        names[ds.SOPInstanceUID] = name
    pdf = ct_dataset("CUR-1", StudyInstanceUID=study, SOPClassUID=EncapsulatedPDFStorage, Modality="DOC",
                     **dict.fromkeys(["Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation",
                                      "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PixelData"]))
    pdf.MIMETypeOfEncapsulatedDocument = "application/pdf"
    pdf.DocumentTitle = "report"
    pdf.EncapsulatedDocument = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    write_part10(folder / "encapsulated.pdf.dcm", pdf)
    names[str(pdf.SOPInstanceUID)] = "encapsulated.pdf.dcm"
    return study, names


def _entries(c: Cluster) -> dict[str, dict]:
    return {r["sop_instance_uid"]: r for r in c.sql("SELECT * FROM webcache_entries", dicts=True)}


def _archived_pixels(c: Cluster, study: dict, uid: str) -> np.ndarray:
    inst = next(i for s in study["series"] for i in s["instances"] if i["sop_instance_uid"] == uid)
    return pydicom.dcmread(c.data_dir / "archive" / "cache" / inst["copies"][0]["locator"]).pixel_array


def test_a_stored_study_is_curated_without_any_command(cluster: Cluster, tmp_path: Path) -> None:
    study_uid, names = _study_files(tmp_path / "study")
    cluster.storescu(*sorted((tmp_path / "study").iterdir()))
    cluster.wait_indexed(len(names))
    entries = wait_until(lambda: (e := _entries(cluster)) and len(e) == len(names)
                    and all(x["state"] != "queued" for x in e.values()) and e, timeout=120)
    states = {names[uid]: e["state"] for uid, e in entries.items()}
    assert states == {**{n: "done" for n in REAL if n not in NO_PIXELS}, **dict.fromkeys(NO_PIXELS, "skipped"),
                      **dict.fromkeys(FAILING, "failed")}
    by_name = {names[uid]: e for uid, e in entries.items()}
    assert "no pixel data (RT Plan Storage)" in by_name["rtplan.dcm"]["error"]
    assert "no pixel data (Comprehensive SR Storage)" in by_name["test-SR.dcm"]["error"]
    assert "no pixel data (Encapsulated PDF Storage)" in by_name["encapsulated.pdf.dcm"]["error"]
    assert all(by_name[n]["metadata_json"] for n in NO_PIXELS)  # their metadata is served all the same
    assert all(by_name[n]["error"] for n in FAILING)
    assert "Bits Stored" in by_name["bits_stored_mismatch.dcm"]["error"]
    assert "pixel values use bits above Bits Stored 10" in by_name["bits_above_bits_stored.dcm"]["error"]
    assert "Bits Stored 32: the wavelet codec takes 1 to 16 bits" in by_name["rtdose_1frame.dcm"]["error"]

    shown = cluster.pacs_json("study", "show", study_uid)
    cache = cluster.data_dir / "webcache"
    for uid, entry in entries.items():
        if entry["state"] != "done":
            continue
        data = (cache / entry["wavelet_key"]).read_bytes()
        assert len(data) == entry["wavelet_size"]
        expected = _archived_pixels(cluster, shown, uid)
        decoded = wavelet.decode(data)
        assert decoded.dtype == expected.dtype and np.array_equal(decoded, expected), names[uid]
        index = json.loads(entry["level_index"])  # byte ranges per level, as a viewer reads them
        top = index["levels"]
        coarse = wavelet.decode(data[: index["level_end"][str(top)]], level=top)
        assert coarse.shape == wavelet.info(data).level_shape(top)
        thumb = (cache / entry["thumbnail_key"]).read_bytes()
        assert thumb[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = int.from_bytes(thumb[16:20], "big"), int.from_bytes(thumb[20:24], "big")
        assert 0 < max(width, height) <= 128

    # once the study is stable, one metadata document per series, without bulk data
    docs = wait_until(lambda: len(list((cache / "series").glob("*.json.gz"))) == len(names) and
                 list((cache / "series").glob("*.json.gz")), timeout=60)
    by_series = {s["series_instance_uid"]: s for s in shown["series"]}
    for path in docs:
        items = json.loads(gzip.decompress(path.read_bytes()))
        series = by_series[path.name[: -len(".json.gz")]]
        assert [i["00080018"]["Value"][0] for i in items] == [
            x["sop_instance_uid"] for x in series["instances"] if _entries(cluster)[x["sop_instance_uid"]]
            ["metadata_json"]]
        for item in items:
            if "7FE00010" in item:
                assert "BulkDataURI" in item["7FE00010"] and "InlineBinary" not in item["7FE00010"]

    usage = cluster.pacs_json("webcache", "usage")
    assert usage["instances"] == {"queued": 0, "done": len(REAL) - 2, "skipped": 3, "failed": 5, "evicted": 0}
    assert usage["series_documents"] == len(names) and usage["bytes"] > 0
    assert cluster.pacs("webcache", "verify").returncode == 0

    # pacs curate redoes a study on demand; a new codec version re-curates by itself
    before = {uid: e["curated_at"] for uid, e in _entries(cluster).items()}
    res = cluster.pacs("curate", study_uid, "--force", check=False)
    assert res.returncode == 1 and "7 done, 5 failed, 3 skipped" in " ".join(res.stdout.split())
    after = _entries(cluster)
    assert all(after[uid]["curated_at"] > before[uid] for uid in before)
    uid_ct = next(u for u, n in names.items() if n == "CT_small.dcm")
    cluster.sql("UPDATE webcache_entries SET codec_version = 0 WHERE sop_instance_uid = ?", uid_ct)
    wait_until(lambda: _entries(cluster)[uid_ct]["codec_version"] == wavelet.FORMAT_VERSION
          and _entries(cluster)[uid_ct]["curated_at"] > after[uid_ct]["curated_at"], timeout=60)
    bad = cluster.pacs("curate", "1.2.3/../4", check=False)
    assert bad.returncode == 2 and "UID" in bad.stderr


def send_then_kill_the_curator(c: Cluster, folder: Path, n: int) -> None:
    """Send the folder's ``n`` images while the curator is held (SIGSTOP),
    so that the kill lands while work is queued however fast or loaded the
    machine is; let it go, and kill it (SIGKILL) once one instance is done."""
    held = c.pids("curator")
    for pid in held:
        os.kill(pid, signal.SIGSTOP)
    try:
        c.storescu(*sorted(folder.iterdir()))
        c.wait_indexed(n)
    finally:
        for pid in held:
            os.kill(pid, signal.SIGCONT)
    wait_until(lambda: any(e["state"] == "done" for e in _entries(c).values()), step=0.02)
    for pid in held:  # the same processes: asking `pacs status` again would take a second
        os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_killed_curator_loses_nothing_and_the_cache_keeps_its_limit(
        make_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    c = make_cluster("postgres", PACS_CURATOR_REQUEUE_SECONDS="4", PACS_WEBCACHE_MAX_BYTES=str(3_000_000)).start()
    folder = tmp_path / "big"
    folder.mkdir()
    rng = np.random.default_rng(5)
    study, series = generate_uid(), generate_uid()
    n = 40
    for k in range(n):
        ds = ct_dataset("BIG-1", seed=rng, StudyInstanceUID=study, SeriesInstanceUID=series, InstanceNumber=k + 1,
                        Rows=512, Columns=512)
        smooth = (np.add.outer(np.arange(512), np.arange(512)) * 3 + rng.integers(0, 64, (512, 512)))
        ds.PixelData = (smooth % 4096).astype(np.uint16).tobytes()
        write_part10(folder / f"{k:03d}.dcm", ds)
    send_then_kill_the_curator(c, folder, n)

    def progress() -> tuple[int, int]:
        e = _entries(c)
        return sum(x["state"] == "done" for x in e.values()), len(e)

    done_at_kill, _ = progress()
    assert done_at_kill < n, "the curator was killed midway"
    wait_until(lambda: progress() == (n, n) or (sum(x["state"] in ("done", "evicted") for x in _entries(c).values())
                                           == n), timeout=180)
    assert all(e["state"] in ("done", "evicted") for e in _entries(c).values())

    # the size limit holds; evicted entries lost their files, and are rebuilt on demand
    # (the study's series document is built once every instance is curated: wait for it too)
    usage = wait_until(lambda: (u := c.pacs_json("webcache", "usage"))["bytes"] <= 3_000_000
                  and u["series_documents"] == 1 and u, timeout=60)
    assert usage["instances"]["evicted"] > 0
    evicted = [e for e in _entries(c).values() if e["state"] == "evicted"]
    assert not (c.data_dir / "webcache" / evicted[0]["wavelet_key"]).exists()
    evicted_now = c.pacs_json("webcache", "evict", "--to", "0")
    assert evicted_now["evicted"] > 0 and evicted_now["freed_bytes"] > 0, evicted_now
    assert c.pacs_json("webcache", "usage")["bytes"] == 0

    # a lost file is found by verify and rebuilt by the curator
    curated = c.pacs_json("curate", study)
    assert curated["errors"] == {} and curated["outcomes"].get("done", 0) > 0, curated
    # the sweeper brings the cache back under its limit: the victim must not be one it evicts
    wait_until(lambda: c.pacs_json("webcache", "usage")["bytes"] <= 3_000_000, timeout=60)
    victim = next(e for e in _entries(c).values() if e["state"] == "done")
    (c.data_dir / "webcache" / victim["wavelet_key"]).unlink()
    res = c.pacs("webcache", "verify", check=False)
    assert res.returncode == 1 and "missing" in res.stdout
    rebuilt = c.data_dir / "webcache" / victim["wavelet_key"]
    wait_until(lambda: rebuilt.exists() and _entries(c)[victim["sop_instance_uid"]]["state"] == "done", timeout=60)
    assert wavelet.info(rebuilt.read_bytes()).rows == 512


def test_work_of_a_killed_curator_is_taken_up_again_at_once_under_pacs_up(
        make_cluster: Callable[..., Cluster], tmp_path: Path) -> None:
    """The embedded broker of ``pacs up``: the message a killed curator had
    claimed goes back to the queue when the curator is restarted, not after
    the sweeper's requeue period (300 s by default, kept here)."""
    c = make_cluster("embedded").start()
    folder = tmp_path / "few"
    folder.mkdir()
    study, series = generate_uid(), generate_uid()
    n = 24
    rng = np.random.default_rng(9)
    for k in range(n):
        ds = ct_dataset("FEW-1", seed=rng, StudyInstanceUID=study, SeriesInstanceUID=series, InstanceNumber=k + 1,
                        Rows=512, Columns=512)
        ds.PixelData = rng.integers(0, 4096, (512, 512)).astype(np.uint16).tobytes()  # noisy: slow to code
        write_part10(folder / f"{k}.dcm", ds)
    send_then_kill_the_curator(c, folder, n)
    assert sum(e["state"] == "done" for e in _entries(c).values()) < n, "killed midway"
    wait_until(lambda: len(e := _entries(c)) == n and all(x["state"] == "done" for x in e.values()), timeout=120)


def test_the_web_cache_can_live_in_s3_compatible_object_storage(
        make_cluster: Callable[..., Cluster], s3_server, tmp_path: Path) -> None:
    """``PACS_WEBCACHE_URL=s3://bucket/prefix``: the same files, in a bucket
    of a real S3 server, checked, evicted and rebuilt the same way."""
    bucket = s3_server.new_bucket()
    c = make_cluster("postgres", **s3_server.env(f"s3://{bucket}/web")).start()
    folder = tmp_path / "study"
    folder.mkdir()
    study = generate_uid()
    for name in ("CT_small.dcm", "US1_J2KR.dcm"):
        ds = pydicom.dcmread(get_testdata_file(name))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(folder / name)
    c.storescu(*sorted(folder.iterdir()))
    c.wait_indexed(2)
    entries = wait_until(lambda: (e := _entries(c)) and len(e) == 2 and all(x["state"] == "done" for x in e.values())
                         and e, timeout=120)
    shown = c.pacs_json("study", "show", study)
    keys = wait_until(lambda: len(k := s3_server.keys(bucket, "web/")) == 6 and k, timeout=60)  # 2 x 2 files + 2 series
    assert not (c.data_dir / "webcache" / "wavelet").exists(), "nothing of the web cache on local disk"
    client = s3_server.client()
    for uid, entry in entries.items():
        assert keys[f"web/{entry['wavelet_key']}"] == entry["wavelet_size"]
        data = client.get_object(Bucket=bucket, Key=f"web/{entry['wavelet_key']}")["Body"].read()
        assert np.array_equal(wavelet.decode(data), _archived_pixels(c, shown, uid))
    assert sum(k.startswith("web/series/") for k in keys) == 2
    assert c.pacs_json("webcache", "usage")["path"] == f"s3://{bucket}/web"
    assert c.pacs("webcache", "verify").returncode == 0

    victim = next(iter(entries.values()))
    client.delete_object(Bucket=bucket, Key=f"web/{victim['thumbnail_key']}")
    res = c.pacs("webcache", "verify", check=False)
    assert res.returncode == 1 and "missing" in res.stdout
    wait_until(lambda: f"web/{victim['thumbnail_key']}" in s3_server.keys(bucket, "web/")
               and _entries(c)[victim["sop_instance_uid"]]["state"] == "done"
               and _entries(c)[victim["sop_instance_uid"]]["curated_at"] > victim["curated_at"], timeout=60)
    redone = _entries(c)[victim["sop_instance_uid"]]["curated_at"]
    wait_until(lambda: c.sql("SELECT max(built_at) FROM webcache_series")[0][0] >= redone, timeout=60)  # its series doc
    c.pacs("webcache", "evict", "--to", "0")
    assert c.pacs_json("webcache", "usage")["bytes"] == 0
    assert s3_server.keys(bucket, "web/") == {}
