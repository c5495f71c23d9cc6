"""Curation in-process, on SQLite and the real PostgreSQL: objects archived
into the cache tier and registered as the gateway does, then curated by
the functions the curator's tasks and ``pacs curate`` call.

Pixel values that do not fit Bits Stored, float pixels and more than 16
bits stored fail for that instance only, with the reason; an entry made
for another lossy setting is found by the sweeper and rebuilt; ``verify``
finds same-size damage in every kind of web-cache file; eviction takes the
least recently used first; ``pacs curate`` reports an object the archive
could not give as failed."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, generate_uid
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from archive.store import accept_from_inbox, cache_store
from curator import wavelet
from curator.curate import PixelDataError, build_series_document, check_stored_bits, curate_instance
from curator.sweeper import _claim_again, series_to_document
from curator.thumbnail import read_png
from curator.webcache import evict, verify, webcache_store
from dbserver.models import Study, WebcacheEntry, WebcacheSeries, utcnow
from dbserver.registration import register_instances
from services.db import run_in_transaction, unit_of_work
from services.dicom import read_header
from services.settings import Settings
from services.storage import object_key
from tests.cluster import free_port
from tests.dicomdata import ct_dataset, write_part10


def _part10(ds: Dataset, tmp: Path) -> bytes:
    if ds.file_meta.get("MediaStorageSOPInstanceUID"):
        buf = io.BytesIO()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue()
    path = tmp / f"{ds.SOPInstanceUID}.dcm"
    write_part10(path, ds)
    return path.read_bytes()


def _archive(settings: Settings, *datasets: Dataset) -> list[str]:
    """Put these objects in the archive's cache tier (verified copies) and
    register them, as the gateway and the archive do; their SOP Instance UIDs."""
    uids, items = [], []
    inbox = settings.archive_inbox_path
    inbox.mkdir(parents=True, exist_ok=True)
    for ds in datasets:
        data = _part10(ds, inbox.parent)
        sha = hashlib.sha256(data).hexdigest()
        (inbox / f"{sha}.dcm").write_bytes(data)
        assert accept_from_inbox([[sha, len(data)]], settings) == 1
        meta = read_header(data).to_dict()
        meta.pop("extra", None)
        meta.update(sha256=sha, size_bytes=len(data), calling_ae_title="TEST", received_at=utcnow().isoformat())
        items.append(meta)
        uids.append(str(ds.SOPInstanceUID))
    register_instances(items, settings)
    return uids


def _real(name: str, study: str | None = None, series: str | None = None, **attrs: object) -> Dataset:
    ds = pydicom.dcmread(get_testdata_file(name))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study or generate_uid(), series or generate_uid()
    ds.SOPInstanceUID = generate_uid()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    return ds


def _entry(settings: Settings, uid: str) -> WebcacheEntry:
    with unit_of_work(settings) as session:
        return session.scalar(select(WebcacheEntry).where(WebcacheEntry.sop_instance_uid == uid))


def _decoded(settings: Settings, uid: str) -> np.ndarray:
    return wavelet.decode(webcache_store(settings).get(_entry(settings, uid).wavelet_key))


# --- 1, 5, 6: what the codec cannot hold exactly fails, with the reason -------------------------------------


def test_pixel_values_above_bits_stored_fail_and_the_rest_is_curated(make_settings: Callable[..., Settings]) -> None:
    s = make_settings()
    study = generate_uid()
    ct = pydicom.dcmread(get_testdata_file("CT_small.dcm")).pixel_array  # signed 16 bits, 128 .. 2191
    cut = _real("CT_small.dcm", study, BitsStored=10, HighBit=9)  # pydicom would give values cut to 511
    unsigned = ct_dataset(seed=1, StudyInstanceUID=study, BitsStored=8, HighBit=7)  # 12-bit values
    values = np.random.default_rng(2).integers(-512, 512, (64, 64))
    extended = ct_dataset(StudyInstanceUID=study, BitsStored=10, HighBit=9, PixelRepresentation=1,
                          PixelData=values.astype("<i2").tobytes())  # sign-extended: right
    masked = ct_dataset(StudyInstanceUID=study, BitsStored=10, HighBit=9, PixelRepresentation=1,
                        PixelData=(values & 0x3FF).astype("<u2").tobytes())  # upper bits zero: right too
    wrong_sign = ct_dataset(StudyInstanceUID=study, BitsStored=10, HighBit=9, PixelRepresentation=1,
                            PixelData=np.full(64 * 64, -1000, "<i2").tobytes())  # -1000 needs 11 bits
    whole = _real("CT_small.dcm", study)
    uids = _archive(s, cut, unsigned, extended, masked, wrong_sign, whole)
    states = [curate_instance(s, uid) for uid in uids]
    assert states == ["failed", "failed", "done", "done", "failed", "done"]
    errors = [_entry(s, uid).error for uid in uids]
    assert "pixel values use bits above Bits Stored 10" in errors[0] and "2191" in errors[0]
    assert "pixel values use bits above Bits Stored 8" in errors[1] and "unsigned" in errors[1]
    assert "pixel values use bits above Bits Stored 10" in errors[4] and "-1000" in errors[4]
    assert np.array_equal(_decoded(s, uids[2]), values) and np.array_equal(_decoded(s, uids[3]), values)
    assert np.array_equal(_decoded(s, uids[5]), ct)
    assert _entry(s, uids[0]).metadata_json  # its metadata is kept all the same


def test_big_endian_native_pixel_data_is_read_in_its_byte_order() -> None:
    ds = ct_dataset(BitsStored=12, HighBit=11)
    ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
    ds.PixelData = np.full(64 * 64, 0x0FF0, ">u2").tobytes()  # fits 12 bits; 0xF00F little endian does not
    check_stored_bits(ds)
    ds.PixelData = np.full(64 * 64, 0x1001, ">u2").tobytes()  # bit 12 set; 0x0110 little endian fits
    with pytest.raises(PixelDataError, match="bits above Bits Stored 12"):
        check_stored_bits(ds)


def test_float_pixels_and_more_than_16_bits_fail_with_the_reason(make_settings: Callable[..., Settings]) -> None:
    s = make_settings()
    floats = ct_dataset(SOPClassUID="1.2.840.10008.5.1.4.1.1.30", BitsAllocated=32, BitsStored=None, HighBit=None,
                        PixelRepresentation=None, PixelData=None)  # a parametric map
    floats.FloatPixelData = np.linspace(0, 1, 64 * 64, dtype=np.float32).tobytes()
    dose = _real("rtdose_1frame.dcm")  # 32 bits stored
    uids = _archive(s, floats, dose)
    assert [curate_instance(s, uid) for uid in uids] == ["failed", "failed"]
    assert _entry(s, uids[0]).error == "float pixel data is not supported"
    assert "Bits Stored 32: the wavelet codec takes 1 to 16 bits" in _entry(s, uids[1]).error


# --- 3: the lossy setting ---------------------------------------------------------------------------------------


def _claimed(s: Settings) -> list[str]:
    return run_in_transaction(lambda session: _claim_again(session, 3600, float(s.curator_lossy_psnr)), s)


def test_a_change_of_the_lossy_setting_rebuilds_the_entries(make_settings: Callable[..., Settings]) -> None:
    lossy = make_settings(curator_lossy_psnr=40.0)
    (uid,) = _archive(lossy, _real("MR_small.dcm"))
    pixels = pydicom.dcmread(get_testdata_file("MR_small.dcm")).pixel_array
    assert curate_instance(lossy, uid) == "done"
    assert _entry(lossy, uid).lossy and not np.array_equal(_decoded(lossy, uid), pixels)
    assert _claimed(lossy) == []

    lossless = make_settings(curator_lossy_psnr=0.0)
    assert _claimed(lossless) == [uid]  # the sweeper asks for it again
    assert curate_instance(lossless, uid) == "done"
    entry = _entry(lossless, uid)
    assert not entry.lossy and entry.lossy_psnr == 0 and np.array_equal(_decoded(lossless, uid), pixels)
    assert _claimed(lossless) == []

    other = make_settings(curator_lossy_psnr=50.0)  # another target rebuilds too
    assert _claimed(other) == [uid] and curate_instance(other, uid) == "done"
    assert _entry(other, uid).lossy and wavelet.info(webcache_store(other).get(entry.wavelet_key)).target_psnr == 50


def test_a_lossy_encoding_larger_than_the_lossless_one_is_kept_lossless(
        make_settings: Callable[..., Settings]) -> None:
    s = make_settings(curator_lossy_psnr=90.0)
    noise = ct_dataset(seed=8)  # 12-bit noise: at 90 dB the quantiser keeps everything, and more
    (uid,) = _archive(s, noise)
    pixels = np.frombuffer(noise.PixelData, "<u2").reshape(64, 64)
    assert len(wavelet.encode(pixels, bits_stored=12, lossy_psnr=90)) > len(wavelet.encode(pixels, bits_stored=12))
    assert curate_instance(s, uid) == "done"
    entry = _entry(s, uid)
    assert not entry.lossy and entry.lossy_psnr == 90 and np.array_equal(_decoded(s, uid), pixels)
    assert _claimed(s) == []  # made for this setting: not rebuilt again and again


# --- 2: verify finds same-size damage ----------------------------------------------------------------------------


def _damage(path: Path, start: int, data: bytes) -> None:
    body = bytearray(path.read_bytes())
    body[start:start + len(data)] = data
    path.write_bytes(bytes(body))


def test_verify_finds_same_size_damage_and_it_is_rebuilt(make_settings: Callable[..., Settings]) -> None:
    s = make_settings()
    study, series = generate_uid(), generate_uid()
    uids = _archive(s, _real("CT_small.dcm", study, series, InstanceNumber=1),
                    _real("CT_small.dcm", study, series, InstanceNumber=2))
    assert [curate_instance(s, uid) for uid in uids] == ["done", "done"]
    run_in_transaction(lambda session: session.execute(update(Study).values(stable=True)), s)
    assert build_series_document(s, series) == 2
    assert verify(s) == {"checked": 3, "broken": []}

    cache = s.data_dir / "webcache"
    wave, thumb = (cache / _entry(s, uids[0]).wavelet_key), (cache / _entry(s, uids[1]).thumbnail_key)
    doc = cache / f"series/{series}.json.gz"
    sizes = [p.stat().st_size for p in (wave, thumb, doc)]
    last = wavelet.info(wave.read_bytes()).chunks[-1]
    _damage(wave, last.offset + last.size // 2, bytes([wave.read_bytes()[last.offset + last.size // 2] ^ 0x10]))
    _damage(thumb, 41, bytes(8))  # inside IDAT
    _damage(doc, sizes[2] // 2, bytes(4))
    assert [p.stat().st_size for p in (wave, thumb, doc)] == sizes

    result = verify(s)
    assert result["checked"] == 3
    problems = {item.get("sop_instance_uid") or item["series_instance_uid"]: item["problem"]
                for item in result["broken"]}
    assert set(problems) == {*uids, series}
    assert "checksum mismatch" in problems[uids[0]] and "CRC mismatch" in problems[uids[1]]
    assert problems[series].startswith(f"series/{series}.json.gz: ")
    assert {_entry(s, uid).state for uid in uids} == {"queued"}

    # the sweeper asks for them again at once; the series document follows
    assert sorted(_claimed(s)) == sorted(uids)
    assert [curate_instance(s, uid) for uid in uids] == ["done", "done"]
    assert run_in_transaction(series_to_document, s) == [series]
    build_series_document(s, series)
    assert verify(s) == {"checked": 3, "broken": []}
    assert wavelet.decode(wave.read_bytes()).shape == (128, 128) and read_png(thumb.read_bytes()).shape == (128, 128)
    assert len(json.loads(gzip.decompress(doc.read_bytes()))) == 2


# --- 9: eviction order --------------------------------------------------------------------------------------------


def test_eviction_takes_the_least_recently_used_first(make_settings: Callable[..., Settings]) -> None:
    s = make_settings()
    study, series = generate_uid(), generate_uid()
    uids = _archive(s, *[ct_dataset(seed=n, StudyInstanceUID=study, SeriesInstanceUID=series, InstanceNumber=n + 1)
                         for n in range(5)])
    assert [curate_instance(s, uid) for uid in uids] == ["done"] * 5
    now = utcnow()
    read_at = dict(zip(uids, [now - timedelta(minutes=m) for m in (3, 50, 1, 40, 20)]))  # read last: uids[2]

    def touch(session: Session) -> None:
        for uid, at in read_at.items():
            session.execute(update(WebcacheEntry).where(WebcacheEntry.sop_instance_uid == uid)
                            .values(last_access_at=at))

    run_in_transaction(touch, s)
    sizes = {uid: _entry(s, uid).wavelet_size + _entry(s, uid).thumbnail_size for uid in uids}
    oldest = sorted(uids, key=read_at.get)[:3]  # 50, 40 and 20 minutes ago
    assert evict(s, sum(sizes.values()) - sum(sizes[u] for u in oldest)) == {
        "evicted": 3, "freed_bytes": sum(sizes[u] for u in oldest)}
    assert {uid for uid in uids if _entry(s, uid).state == "evicted"} == set(oldest)
    cache = s.data_dir / "webcache"
    assert not any((cache / f"wavelet/{uid}.pcw").exists() for uid in oldest)
    assert all((cache / _entry(s, uid).wavelet_key).exists() for uid in set(uids) - set(oldest))
    with unit_of_work(s) as session:
        assert session.scalar(select(WebcacheSeries.id)) is None


# --- 7, 9: pacs curate -----------------------------------------------------------------------------------------------


def _pacs(s: Settings, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PACS_DATA_DIR": str(s.data_dir), "PACS_DATABASE_URL": s.database_url, **env}
    return subprocess.run([sys.executable, "-m", "admin.cli", *args], env=environ, capture_output=True, text=True,
                          check=False, timeout=300)


def test_pacs_curate_reports_an_object_the_archive_could_not_give(make_settings: Callable[..., Settings]) -> None:
    s = make_settings()
    study = generate_uid()
    good, lost = _archive(s, ct_dataset(seed=1, StudyInstanceUID=study), ct_dataset(seed=2, StudyInstanceUID=study))
    sha = _entry_sha(s, lost)
    cache_store(s).path(object_key(sha)).unlink()  # not on this host, and no archive server answers
    res = _pacs(s, "curate", study, PACS_ARCHIVE_URL=f"http://127.0.0.1:{free_port()}")
    assert res.returncode == 1, res.stdout + res.stderr
    text = " ".join(res.stdout.split())
    assert "1 done, 1 failed" in text and f"{lost}: archive fetch failed" in text
    assert _entry(s, good).state == "done"


def _entry_sha(s: Settings, uid: str) -> str:
    from dbserver.models import Instance

    with unit_of_work(s) as session:
        return session.scalar(select(Instance.sha256).where(Instance.sop_instance_uid == uid))


def test_pacs_curate_all_curates_every_study(make_settings: Callable[..., Settings]) -> None:
    s = make_settings()
    first = _archive(s, _real("CT_small.dcm"), _real("MR_small.dcm"))
    second = _archive(s, _real("rtplan.dcm"), ct_dataset(seed=3))
    res = _pacs(s, "curate", "--all")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "3 done, 1 skipped" in " ".join(res.stdout.split())
    assert [_entry(s, uid).state for uid in first + second] == ["done", "done", "skipped", "done"]
    with unit_of_work(s) as session:
        assert session.scalar(select(WebcacheSeries.id).limit(1)) is not None
        docs = session.scalars(select(WebcacheSeries.num_instances)).all()
    assert sorted(docs) == [1, 1, 1, 1]
    again = _pacs(s, "curate", "--all")
    assert again.returncode == 0 and "3 done, 1 skipped" in " ".join(again.stdout.split())
