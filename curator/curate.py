"""Curation: one archived instance in, its web-cache copy out.

:func:`curate_instance` reads the object from the archive (transfer
protocol), decodes its pixels with pydicom and the pylibjpeg plugins,
whatever transfer syntax it was stored in, and writes the wavelet file
(:mod:`curator.wavelet`) and a thumbnail to the web cache, then records the
entry (levels and their byte ranges, sizes, codec version) and the
instance's DICOM JSON for the series metadata document. Objects without
pixel data are recorded ``skipped``; pixels that cannot be decoded or
encoded (a truncated JPEG 2000, native pixel values that use bits above
Bits Stored, more than 16 bits stored, float pixel data) ``failed`` with
the reason — the rest of the study is curated all the same.

Safe to run twice: an instance whose entry is done with the current codec
and lossy setting for the object now representing it is left alone
(``force`` redoes it).
:func:`build_series_document` writes the per-series metadata document.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from curator import wavelet
from curator.thumbnail import thumbnail, thumbnail_level
from curator.webcache import (
    DONE, FAILED, FINAL, QUEUED, SKIPPED, new_entry, series_key, thumbnail_key, wavelet_key, webcache_store,
)
from dbserver.models import Instance, ObjectCopy, Series, Study, WebcacheEntry, WebcacheSeries, utcnow
from services.db import run_in_transaction, unit_of_work
from services.errors import PacsError
from services.settings import Settings
from services.sqlutil import insert_ignore
from services.transfer import fetch
from services.uids import check_uid

LOG = logging.getLogger(__name__)

CODEC_VERSION = wavelet.FORMAT_VERSION
BULK_THRESHOLD = 1024  # base64 characters: longer values are left out of the metadata, as BulkDataURI
PIXEL_TAGS = ("7FE00008", "7FE00009", "7FE00010")  # Float, Double Float and Pixel Data


class PixelDataError(ValueError):
    """Pixel data the web cache cannot represent exactly."""


@dataclass
class Outcome:
    """What :func:`curate` did: the entry's state and, when it failed or
    must wait (``queued``: the archive could not be read), why."""

    state: str
    error: str = ""


@dataclass
class Source:
    sop_instance_uid: str
    sha256: str
    locator: str | None
    study_instance_uid: str
    series_instance_uid: str


def _source(session: Session, uid: str) -> Source | None:
    row = session.execute(
        select(Instance.sha256, Series.series_instance_uid, Study.study_instance_uid)
        .join(Series, Instance.series_fk == Series.id).join(Study, Series.study_fk == Study.id)
        .where(Instance.sop_instance_uid == uid)).first()
    if row is None:
        return None
    locator = session.scalar(select(ObjectCopy.locator).where(
        ObjectCopy.sha256 == row[0], ObjectCopy.tier == "cache", ObjectCopy.verified_at.is_not(None)))
    return Source(uid, row[0], locator, row[2], row[1])


def _metadata(ds: Dataset, src: Source) -> str:
    """DICOM JSON (PS3.18 F.2) of the dataset; pixel data, and other values
    longer than BULK_THRESHOLD, as a BulkDataURI under the instance's
    DICOMweb path."""
    base = (f"/dicom-web/studies/{src.study_instance_uid}/series/{src.series_instance_uid}"
            f"/instances/{src.sop_instance_uid}")

    def bulk(elem: Any) -> str:
        return f"{base}/bulk/{elem.tag:08X}"

    doc = ds.to_json_dict(bulk_data_threshold=BULK_THRESHOLD, bulk_data_element_handler=bulk,
                          suppress_invalid_tags=True)
    for tag in PIXEL_TAGS:  # pixel data is bulk data whatever its size
        if tag in doc:
            doc[tag] = {"vr": doc[tag]["vr"], "BulkDataURI": f"{base}/bulk/{tag}"}
    return json.dumps(doc, separators=(",", ":"))


def _record(settings: Settings, src: Source, **values: Any) -> None:
    now = utcnow()
    values.setdefault("error", "")
    values.update(sha256=src.sha256, curated_at=now, last_access_at=now, codec_version=CODEC_VERSION)

    def work(session: Session) -> None:
        insert_ignore(session, WebcacheEntry.__table__, [new_entry(src.sop_instance_uid, src.sha256, now)],
                      ["sop_instance_uid"])
        session.execute(update(WebcacheEntry).where(WebcacheEntry.sop_instance_uid == src.sop_instance_uid)
                        .values(attempts=WebcacheEntry.attempts + 1, **values))

    run_in_transaction(work, settings)


def _level_index(info: wavelet.WaveletInfo) -> str:
    return json.dumps({"levels": info.levels, "rows": info.rows, "cols": info.cols, "frames": info.frames,
                       "index_end": info.index_end,
                       "level_end": {str(level): info.level_end(level) for level in range(info.levels + 1)}})


def lossy_setting(settings: Settings) -> float:
    """The lossy target an entry made now is encoded for (0: lossless)."""
    return float(settings.curator_lossy_psnr or 0)


def curate_instance(settings: Settings, uid: str, force: bool = False) -> str:
    """Curate one instance; returns its entry's state (or ``gone``)."""
    return curate(settings, uid, force).state


def curate(settings: Settings, uid: str, force: bool = False) -> Outcome:
    """Curate one instance. ``queued`` with an error: the archive could not
    be read now; the entry stays queued and the sweeper asks again."""
    check_uid(uid, "SOP Instance UID")
    with unit_of_work(settings) as session:
        src = _source(session, uid)
        entry = session.scalar(select(WebcacheEntry).where(WebcacheEntry.sop_instance_uid == uid))
    if src is None:
        return Outcome("gone")
    if (not force and entry is not None and entry.state in FINAL and entry.codec_version == CODEC_VERSION
            and entry.sha256 == src.sha256
            and (entry.state != DONE or entry.lossy_psnr == lossy_setting(settings))):
        return Outcome(entry.state, entry.error)
    try:
        data = fetch(src.sha256, src.locator, settings)
    except PacsError as exc:  # the archive will have it: the sweeper asks again
        LOG.warning("curation of %s waits: %s", uid, exc)
        return Outcome(QUEUED, f"archive fetch failed: {exc}")
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
        metadata = _metadata(ds, src)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on a bad object
        return _fail(settings, src, f"unreadable object: {exc}")
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        return _fail(settings, src, "float pixel data is not supported", metadata)
    if "PixelData" not in ds:
        kind = ds.get("SOPClassUID")
        name = getattr(kind, "name", str(kind or "unknown SOP class"))
        error = f"no pixel data ({name})"
        _record(settings, src, state=SKIPPED, metadata_json=metadata, error=error)
        return Outcome(SKIPPED, error)
    try:
        blob, info, thumb = _encode(ds, settings)
    except Exception as exc:  # noqa: BLE001 - decoders and the codec raise many kinds
        LOG.warning("curation of %s failed: %s", uid, exc)
        return _fail(settings, src, f"{type(exc).__name__}: {exc}", metadata)
    store = webcache_store(settings)
    store.put(wavelet_key(uid), blob)
    store.put(thumbnail_key(uid), thumb)
    _record(settings, src, state=DONE, metadata_json=metadata, wavelet_key=wavelet_key(uid),
            wavelet_size=len(blob), thumbnail_key=thumbnail_key(uid), thumbnail_size=len(thumb),
            levels=info.levels, level_index=_level_index(info), lossy=info.lossy,
            lossy_psnr=lossy_setting(settings))
    return Outcome(DONE)


def _fail(settings: Settings, src: Source, error: str, metadata: str = "") -> Outcome:
    error = error[:2000]
    _record(settings, src, state=FAILED, metadata_json=metadata, error=error)
    return Outcome(FAILED, error)


def check_stored_bits(ds: Dataset) -> None:
    """Refuse native pixel data whose stored values do not fit Bits Stored
    (PS3.5 8.1.1): pydicom masks the bits above it (or sign-extends from
    it), which would silently change the image. Unsigned: no bit above
    Bits Stored may be set. Signed (Pixel Representation 1): the bits above
    High Bit must be all zero or a sign extension of it. Compressed
    transfer syntaxes are left to their decoders."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is None or syntax.is_compressed or "PixelData" not in ds:
        return
    allocated, stored = int(ds.get("BitsAllocated") or 0), int(ds.get("BitsStored") or 0)
    if stored > allocated:
        raise PixelDataError(f"Bits Stored {stored} exceeds Bits Allocated {allocated}")
    if allocated not in (8, 16, 32) or not stored or stored == allocated:
        return
    count = (int(ds.get("Rows") or 0) * int(ds.get("Columns") or 0) * int(ds.get("SamplesPerPixel") or 1)
             * int(ds.get("NumberOfFrames") or 1))
    order = "<" if syntax.is_little_endian else ">"
    raw = bytes(ds.PixelData)[:count * allocated // 8]
    raw = raw[:len(raw) // (allocated // 8) * (allocated // 8)]  # a short value is left to pydicom's error
    values = np.frombuffer(raw, f"{order}u{allocated // 8}").astype(np.int64)
    high = values >> stored  # the bits above High Bit (Bits Stored - 1: pydicom's layout)
    if int(ds.get("PixelRepresentation") or 0) == 0:
        bad = high != 0
        wanted = values
    else:
        sign = (values >> (stored - 1)) & 1
        bad = (high != 0) & ((high != (1 << (allocated - stored)) - 1) | (sign == 0))
        wanted = np.where(values >> (allocated - 1) == 1, values - (1 << allocated), values)
    if bad.any():
        kind = "signed" if int(ds.get("PixelRepresentation") or 0) else "unsigned"
        used = wanted[bad]
        raise PixelDataError(
            f"pixel values use bits above Bits Stored {stored}: {int(bad.sum())} of {values.size} {kind} values, "
            f"from {int(used.min())} to {int(used.max())} (Bits Allocated {allocated}, High Bit "
            f"{ds.get('HighBit')})")


def _encode(ds: Dataset, settings: Settings) -> tuple[bytes, wavelet.WaveletInfo, bytes]:
    bits = int(ds.get("BitsStored") or 0)
    if bits > 16:
        raise PixelDataError(f"Bits Stored {bits}: the wavelet codec takes 1 to 16 bits")
    check_stored_bits(ds)
    pixels = ds.pixel_array
    frames = int(ds.get("NumberOfFrames") or 1) > 1
    bits = bits or pixels.dtype.itemsize * 8
    if np.issubdtype(pixels.dtype, np.floating):
        raise PixelDataError("float pixel data is not supported")
    psnr = lossy_setting(settings)
    blob = wavelet.encode(pixels, bits_stored=bits, frames=frames, lossy_psnr=psnr or None)
    if psnr:  # a lossy file larger than the lossless one buys nothing: keep the exact one
        exact = wavelet.encode(pixels, bits_stored=bits, frames=frames)
        if len(exact) <= len(blob):
            blob = exact
    info = wavelet.info(blob)
    small = wavelet.decode(blob, level=thumbnail_level(info.rows, info.cols, info.levels))
    return blob, info, thumbnail(small[0] if frames else small, ds, bits)


def build_series_document(settings: Settings, series_uid: str) -> int:
    """Write the series' metadata document (every instance's DICOM JSON,
    by instance number, gzip) and record it; returns its instance count."""
    check_uid(series_uid, "Series Instance UID")
    with unit_of_work(settings) as session:
        rows = session.execute(
            select(WebcacheEntry.metadata_json).join(Instance, Instance.sop_instance_uid ==
                                                     WebcacheEntry.sop_instance_uid)
            .join(Series, Instance.series_fk == Series.id)
            .where(Series.series_instance_uid == series_uid, WebcacheEntry.metadata_json != "")
            .order_by(Instance.instance_number, Instance.sop_instance_uid)).all()
    body = b"[" + b",".join(m.encode() for (m,) in rows) + b"]"
    doc = gzip.compress(body, compresslevel=6, mtime=0)
    key = series_key(series_uid)
    webcache_store(settings).put(key, doc)
    now = utcnow()

    def work(session: Session) -> None:
        insert_ignore(session, WebcacheSeries.__table__, [{
            "series_instance_uid": series_uid, "state": DONE, "key": key, "size_bytes": len(doc),
            "num_instances": len(rows), "built_at": now, "last_access_at": now}], ["series_instance_uid"])
        session.execute(update(WebcacheSeries).where(WebcacheSeries.series_instance_uid == series_uid)
                        .values(state=DONE, key=key, size_bytes=len(doc), num_instances=len(rows), built_at=now,
                                last_access_at=now))

    run_in_transaction(work, settings)
    return len(rows)
