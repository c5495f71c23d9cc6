"""Benchmark of the curator's wavelet codec against JPEG 2000 (OpenJPEG),
HTJ2K (OpenJPH) and JPEG-LS (CharLS), lossless, on real DICOM images.

Corpus: the grayscale (MONOCHROME1/2) single-frame images of pydicom's
test files and pydicom-data with 8..16 bits stored and at least 128 x 128
pixels, without those whose pixel data went through a lossy codec, one
copy per distinct pixel array.

For each codec: compression ratio (raw bytes at 1 byte/pixel for 8 bits,
2 for more; total and geometric mean per image, per modality), single-
thread encode and decode MB/s of raw bytes, every round trip verified, and the share of the file a viewer needs for the 1/8 and 1/4
previews:

- ours: ``info(data).level_end(k)`` (k = 3, 2), decoded and checked;
- openjpeg: the codestream is LRCP with one layer, so packets come in
  resolution order; the bytes up to the end of the last packet of the
  resolution are read from the PLT marker (packet lengths), not decoded;
- htj2k: encoded with one tile-part per resolution; the prefix up to the
  end of the resolution's tile-part (SOT lengths), decoded with
  ``skipres`` to check it;
- jpegls: not progressive, the whole file (share 1).

Images with fewer than 3 wavelet levels (neither side above 256 pixels)
are left out of the preview shares, for every codec.

Timing: each codec is called once first (numba's compile time and warm
caches excluded), then image by image every codec encodes, then every codec
decodes, ``--repeats`` times in turn, and the best time of each is kept.
Times are the calling thread's CPU time (``time.thread_time``): every codec
here runs in that one thread, and on a shared machine CPU time does not
count the time other processes held the core, while taking turns makes
whatever else runs weigh on every codec alike.

Run: ``python bench/curator.py [--json] [--repeats N]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import data_store  # noqa: E402
import imagecodecs  # noqa: E402
import numpy as np  # noqa: E402
import openjpeg  # noqa: E402
import pydicom  # noqa: E402
import pydicom.data  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from curator import wavelet  # noqa: E402

LOSSY_SYNTAXES = {
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.81",
    "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.4.203",
}
J2K_LEVELS = 5  # OpenJPEG's fixed 6 resolutions; the HTJ2K encoder's default


def corpus() -> list[dict]:
    own = Path(pydicom.data.__file__).parent / "test_files"
    extra = Path(data_store.__file__).parent / "data"
    files = sorted(p for p in [*own.iterdir(), *extra.glob("*.dcm")] if p.is_file())
    seen: dict[str, dict] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for path in files:
            try:
                ds = pydicom.dcmread(path)
                if "PixelData" not in ds or ds.get("PhotometricInterpretation") not in ("MONOCHROME1", "MONOCHROME2"):
                    continue
                if int(ds.get("NumberOfFrames", 1) or 1) != 1 or not 8 <= int(ds.BitsStored) <= 16:
                    continue
                if str(ds.file_meta.TransferSyntaxUID) in LOSSY_SYNTAXES or ds.get("LossyImageCompression") == "01":
                    continue
                arr = ds.pixel_array
            except Exception:
                continue
            if arr.shape[0] < 128 or arr.shape[1] < 128:
                continue
            arr = np.ascontiguousarray(arr.astype(arr.dtype.newbyteorder("=")))
            key = hashlib.sha1(arr.astype(np.int32).tobytes()).hexdigest()
            if key not in seen:
                seen[key] = dict(name=path.name, modality=str(ds.get("Modality", "?")), arr=arr, bits=int(ds.BitsStored))
    return list(seen.values())


# ------------------------------------------------------------------ codecs


def _sot_ends(cs: bytes) -> list[int]:
    """End offsets of the tile-parts of a single-tile codestream."""
    ends, pos = [], cs.find(b"\xff\x90")
    while pos >= 0 and pos + 10 <= len(cs):
        psot = int.from_bytes(cs[pos + 6 : pos + 10], "big")
        if psot == 0:
            break
        ends.append(pos + psot)
        nxt = pos + psot
        pos = nxt if cs[nxt : nxt + 2] == b"\xff\x90" else -1
    return ends


def _plt_prefix(cs: bytes, resolution: int) -> int | None:
    """Bytes up to the end of packet ``resolution`` (LRCP, one layer, one
    component, one precinct per resolution) from the PLT marker."""
    sot = cs.find(b"\xff\x90")
    plt = cs.find(b"\xff\x58", sot)
    sod = cs.find(b"\xff\x93", sot)
    if min(sot, plt, sod) < 0 or plt > sod:
        return None
    length = int.from_bytes(cs[plt + 2 : plt + 4], "big")
    body = cs[plt + 5 : plt + 2 + length]
    packets, value = [], 0
    for b in body:
        value = (value << 7) | (b & 0x7F)
        if not b & 0x80:
            packets.append(value)
            value = 0
    if len(packets) <= resolution:
        return None
    return sod + 2 + sum(packets[: resolution + 1])


class Ours:
    name = "ours"

    def encode(self, img):
        return wavelet.encode(img["arr"], bits_stored=img["bits"])

    def decode(self, data, img):
        return wavelet.decode(data)

    def preview(self, data, img, k):
        hdr = wavelet.info(data)
        if hdr.levels < 3:
            return None
        end = hdr.level_end(k)
        got = wavelet.decode(data[:end], level=k)
        assert got.shape == hdr.level_shape(k)
        return end


class OpenJPEG:
    name = "openjpeg"

    def encode(self, img):
        return openjpeg.encode(img["arr"], bits_stored=img["bits"], add_plt=True)

    def decode(self, data, img):
        return openjpeg.decode(data)

    def preview(self, data, img, k):
        return _plt_prefix(data, J2K_LEVELS - k)


class HTJ2K:
    name = "htj2k"

    def encode(self, img):
        return imagecodecs.htj2k_encode(img["arr"], reversible=True, tilepart=1)

    def decode(self, data, img):
        return imagecodecs.htj2k_decode(data)

    def preview(self, data, img, k):
        ends = _sot_ends(data)
        r = J2K_LEVELS - k
        if len(ends) != J2K_LEVELS + 1:
            return None
        prefix = data[: ends[r]] + b"\xff\xd9"
        got = imagecodecs.htj2k_decode(prefix, skipres=k)
        rows, cols = img["arr"].shape
        assert got.shape == (-(-rows // 2**k), -(-cols // 2**k)), got.shape
        return ends[r]


class JPEGLS:
    name = "jpegls"

    # CharLS takes unsigned samples only: signed images are offset by
    # 2**(bits - 1) (a reversible shift that costs JPEG-LS nothing).
    def encode(self, img):
        arr = img["arr"]
        if arr.dtype.kind == "i":
            arr = (arr.astype(np.int32) + (1 << (img["bits"] - 1))).astype(np.uint16)
        return imagecodecs.jpegls_encode(arr)

    def decode(self, data, img):
        out = imagecodecs.jpegls_decode(data)
        if img["arr"].dtype.kind == "i":
            out = (out.astype(np.int32) - (1 << (img["bits"] - 1))).astype(img["arr"].dtype)
        return out

    def preview(self, data, img, k):
        return len(data)


# ------------------------------------------------------------------ run


def _cpu(fn):
    t = time.thread_time()
    out = fn()
    return time.thread_time() - t, out


def run_all(images, codecs, repeats):
    """Rows per codec; the codecs take turns on every image and repeat."""
    for codec in codecs:  # warm-up (numba compile, caches)
        codec.decode(codec.encode(images[0]), images[0])
    rows = {codec.name: [] for codec in codecs}
    for img in images:
        arr = img["arr"]
        raw = arr.size * (1 if img["bits"] <= 8 else 2)
        t_enc = {c.name: math.inf for c in codecs}
        t_dec = dict(t_enc)
        data, out = {}, {}
        for _ in range(repeats):
            for c in codecs:
                t, data[c.name] = _cpu(lambda: c.encode(img))
                t_enc[c.name] = min(t_enc[c.name], t)
            for c in codecs:
                t, out[c.name] = _cpu(lambda: c.decode(data[c.name], img))
                t_dec[c.name] = min(t_dec[c.name], t)
        for c in codecs:
            if not np.array_equal(np.asarray(out[c.name]).reshape(arr.shape), arr):
                raise SystemExit(f"{c.name}: round trip of {img['name']} is not exact")
            p8 = p4 = None
            if wavelet.default_levels(*arr.shape) >= 3:  # the same images for every codec
                p8, p4 = c.preview(data[c.name], img, 3), c.preview(data[c.name], img, 2)
            rows[c.name].append(dict(name=img["name"], modality=img["modality"], raw=raw,
                                     size=len(data[c.name]), t_enc=t_enc[c.name], t_dec=t_dec[c.name],
                                     p8=p8, p4=p4, mp=arr.size >= 1_000_000))  # fmt: skip
    return rows


def _share(rows, key, big=None):
    sel = [r for r in rows if r[key] is not None and (big is None or r["mp"] == big)]
    if not sel:
        return None
    return sum(r[key] for r in sel) / sum(r["size"] for r in sel)


def summarise(rows):
    ratios = [r["raw"] / r["size"] for r in rows]
    mods: dict[str, list] = {}
    for r in rows:
        mods.setdefault(r["modality"], []).append(r)
    return dict(
        ratio_total=sum(r["raw"] for r in rows) / sum(r["size"] for r in rows),
        ratio_geomean=math.exp(sum(map(math.log, ratios)) / len(ratios)),
        encode_mb_s=sum(r["raw"] for r in rows) / sum(r["t_enc"] for r in rows) / 1e6,
        decode_mb_s=sum(r["raw"] for r in rows) / sum(r["t_dec"] for r in rows) / 1e6,
        preview_1_8_share=_share(rows, "p8"),
        preview_1_4_share=_share(rows, "p4"),
        preview_1_8_share_ge_1mp=_share(rows, "p8", True),
        preview_1_4_share_ge_1mp=_share(rows, "p4", True),
        preview_images=sum(r["p8"] is not None for r in rows),
        ratio_by_modality={m: sum(r["raw"] for r in v) / sum(r["size"] for r in v) for m, v in sorted(mods.items())},
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    images = corpus()
    codecs = [Ours(), OpenJPEG(), HTJ2K(), JPEGLS()]
    results = run_all(images, codecs, args.repeats)
    summary = {name: summarise(rows) for name, rows in results.items()}
    corpus_desc = [dict(name=i["name"], modality=i["modality"], shape=list(i["arr"].shape), bits=i["bits"]) for i in images]
    if args.json:
        print(json.dumps({"codecs": summary, "corpus": corpus_desc}, indent=1))
        return
    mods = sorted({i["modality"] for i in images})
    print(f"{len(images)} images, raw {sum(r['raw'] for r in results['ours']) / 1e6:.1f} MB; modalities "
          + ", ".join(f"{m} {sum(i['modality'] == m for i in images)}" for m in mods))  # fmt: skip
    for i in images:
        print(f"  {i['name']:36s} {i['modality']:3s} {i['arr'].shape[0]}x{i['arr'].shape[1]} {i['bits']} bits")

    def pct(x):
        return "  n/a" if x is None else f"{100 * x:5.1f}%"

    head = f"{'codec':9s} {'ratio':>6s} {'geo':>6s} " + " ".join(f"{m:>6s}" for m in mods)
    head += f" {'enc MB/s':>8s} {'dec MB/s':>8s} {'1/8':>6s} {'1/4':>6s} {'1/8 1MP':>7s} {'1/4 1MP':>7s}"
    print(head)
    for name, s in summary.items():
        line = f"{name:9s} {s['ratio_total']:6.3f} {s['ratio_geomean']:6.3f} "
        line += " ".join(f"{s['ratio_by_modality'][m]:6.3f}" for m in mods)
        line += f" {s['encode_mb_s']:8.1f} {s['decode_mb_s']:8.1f} {pct(s['preview_1_8_share'])} {pct(s['preview_1_4_share'])}"
        line += f" {pct(s['preview_1_8_share_ge_1mp']):>7s} {pct(s['preview_1_4_share_ge_1mp']):>7s}"
        print(line)
    print(f"(preview shares over the {summary['ours']['preview_images']} images with >= 3 levels; "
          "openjpeg's from PLT packet lengths, not decoded)")  # fmt: skip


if __name__ == "__main__":
    main()
