#!/usr/bin/env python3
"""Ingest benchmark: C-STORE throughput of PACS Cluster against dcmtk's
storescp and Orthanc, on the same synthetic CT data and the same sender.

For each peer, N synthetic 512×512 16-bit CT instances are sent by K parallel
dcmtk ``storescu`` processes (one association each). *Acknowledged* time is the
wall time until every storescu has exited; for the cluster, *end-to-end* time
runs until every instance is indexed in the database and has a verified copy
in the archive's cache tier. See bench/README.md.

    python bench/ingest.py --instances 2000 --associations 4
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

STORESCU = "/usr/bin/storescu"  # dcmtk's; pynetdicom installs a Python script of the same name
STORESCP = "/usr/bin/storescp"
ORTHANC = "/usr/sbin/Orthanc"
PEERS = ("cluster", "storescp", "orthanc")
CALLING_AE = "BENCHSCU"
ROWS = COLUMNS = 512


# --------------------------------------------------------------------------
# synthetic data
# --------------------------------------------------------------------------

def _phantom(rng: np.random.Generator) -> np.ndarray:
    """A body-like ellipse with a few organs, as stored values (HU + 1024)."""
    y, x = np.mgrid[0:ROWS, 0:COLUMNS].astype(np.float32)
    cy, cx = ROWS / 2, COLUMNS / 2
    img = np.zeros((ROWS, COLUMNS), np.float32)  # air: -1024 HU
    body = ((x - cx) / 200) ** 2 + ((y - cy) / 150) ** 2 <= 1
    img[body] = 1024 + 40  # soft tissue
    for _ in range(5):
        oy, ox = rng.uniform(cy - 90, cy + 90), rng.uniform(cx - 140, cx + 140)
        r = rng.uniform(15, 45)
        img[((x - ox) ** 2 + (y - oy) ** 2) <= r * r] = 1024 + rng.uniform(-900, 1200)
    return img


def generate(folder: Path, n: int, seed: int = 1) -> list[Path]:
    """Write *n* CT instances (Explicit VR Little Endian) in a handful of
    studies and series; return their paths in sending order."""
    rng = np.random.default_rng(seed)
    n_studies = max(1, min(5, n // 200 or 1))
    series_per_study = 3
    paths: list[Path] = []
    per_series = -(-n // (n_studies * series_per_study))
    index = 0
    for st in range(n_studies):
        study_uid = generate_uid()
        patient_id = f"BENCH{st + 1:04d}"
        for se in range(series_per_study):
            if index >= n:
                break
            series_uid = generate_uid()
            frame_uid = generate_uid()
            base = _phantom(rng)
            for inst in range(min(per_series, n - index)):
                noise = rng.normal(0, 12, (ROWS, COLUMNS)).astype(np.float32)
                pixels = np.clip(base + noise + 8 * np.sin(inst / 7.0), 0, 4095).astype(np.uint16)
                ds = _ct_dataset(study_uid, series_uid, frame_uid, patient_id, st, se, inst, pixels)
                path = folder / f"CT{index:06d}.dcm"
                ds.save_as(path, enforce_file_format=True)
                paths.append(path)
                index += 1
    return paths


def _ct_dataset(study_uid: str, series_uid: str, frame_uid: str, patient_id: str,
                st: int, se: int, inst: int, pixels: np.ndarray) -> Dataset:
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = "20250314"
    ds.StudyTime = "081500"
    ds.SeriesTime = f"0816{se:02d}"
    ds.ContentTime = ds.AcquisitionTime = f"0816{se:02d}.{inst:06d}"
    ds.AccessionNumber = f"ACC{st + 1:06d}"
    ds.Modality = "CT"
    ds.Manufacturer = "PACS Cluster bench"
    ds.InstitutionName = "Bench Hospital"
    ds.ReferringPhysicianName = "Referrer^Rita"
    ds.StationName = "CT01"
    ds.StudyDescription = "CT CHEST ABDOMEN PELVIS"
    ds.SeriesDescription = ["Thorax 1.0 B31f", "Abdomen 2.0 B30f", "Pelvis 3.0 B20f"][se % 3]
    ds.ManufacturerModelName = "Synthetic 64"
    ds.PatientName = f"Bench^Patient{st + 1}"
    ds.PatientID = patient_id
    ds.IssuerOfPatientID = "BENCH"
    ds.PatientBirthDate = f"19{50 + st:02d}0601"
    ds.PatientSex = "MF"[st % 2]
    ds.PatientAge = f"{75 - st:03d}Y"
    ds.BodyPartExamined = ["CHEST", "ABDOMEN", "PELVIS"][se % 3]
    ds.SliceThickness = "1.0"
    ds.KVP = "120"
    ds.DataCollectionDiameter = "500"
    ds.ReconstructionDiameter = "400"
    ds.GantryDetectorTilt = "0"
    ds.TableHeight = "150"
    ds.RotationDirection = "CW"
    ds.ExposureTime = "500"
    ds.XRayTubeCurrent = "200"
    ds.Exposure = "100"
    ds.ConvolutionKernel = "B31f"
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = str(st + 1)
    ds.SeriesNumber = se + 1
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = inst + 1
    ds.ImagePositionPatient = [-200.0, -200.0, -float(inst)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = -float(inst)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ROWS
    ds.Columns = COLUMNS
    ds.PixelSpacing = [0.78125, 0.78125]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.PixelData = pixels.tobytes()
    return ds


# --------------------------------------------------------------------------
# processes and ports
# --------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None,
               log: Path | None = None, interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}{_tail(log)}")
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(interval)
    raise RuntimeError(f"{what}: not ready after {timeout:.0f} s{_tail(log)}")


def _tail(log: Path | None, lines: int = 25) -> str:
    if log is None or not log.exists():
        return ""
    text = log.read_text(errors="replace").splitlines()[-lines:]
    return "\n  log " + str(log) + ":\n    " + "\n    ".join(text)


def port_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return resp.status == 200


def start(cmd: list[str], log: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> subprocess.Popen:
    """Start a server in its own process group, so that stopping it stops its children."""
    # dcmtk-based servers (storescp, Orthanc) read TCP_NODELAY too: with Nagle on,
    # each C-STORE response waits out a delayed ACK (~40 ms).
    env = dict(os.environ if env is None else env, TCP_NODELAY="1")
    out = log.open("wb")
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                            start_new_session=True)


def stop(proc: subprocess.Popen | None, grace: float = 30.0) -> None:
    """SIGTERM the process group we created, then SIGKILL after *grace*."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


# --------------------------------------------------------------------------
# sending
# --------------------------------------------------------------------------

_RESPONSE = re.compile(r"Received Store Response(?: \((?P<status>[^)]*)\))?")


@dataclass
class SendResult:
    seconds: float
    acknowledged: int
    failed: int
    exit_codes: list[int]


def all_services_up(env: dict[str, str]) -> bool:
    try:
        services = pacs_json(["status"], env)["services"]
    except Exception:  # noqa: BLE001 - not ready yet
        return False
    listeners = [p for p in services["gateway"]["processes"] if p["service"] == "gateway-listener"]
    return all(s["up"] for s in services.values()) and len(listeners) >= int(
        env.get("PACS_GATEWAY_PROCESSES", "2"))


def send(paths: list[Path], port: int, called_ae: str, associations: int, timeout: float,
         logdir: Path) -> SendResult:
    """Send *paths* over *associations* parallel dcmtk storescu processes; the
    clock runs from the first start to the last exit."""
    k = max(1, min(associations, len(paths)))
    chunks = [paths[i * len(paths) // k:(i + 1) * len(paths) // k] for i in range(k)]
    env = dict(os.environ, TCP_NODELAY="1")  # Debian's dcmtk leaves Nagle on otherwise
    procs, logs = [], []
    t0 = time.perf_counter()
    for i, chunk in enumerate(chunks):
        log = logdir / f"storescu-{i}.log"
        logs.append(log)
        cmd = [STORESCU, "-v", "-aet", CALLING_AE, "-aec", called_ae, "-to", "60", "-ta", "60",
               "-td", "120", "127.0.0.1", str(port), *map(str, chunk)]
        procs.append(subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env))
    codes = []
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            codes.append(proc.wait(max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            proc.kill()
            codes.append(proc.wait())
    seconds = time.perf_counter() - t0
    acked = 0
    for log in logs:
        for m in _RESPONSE.finditer(log.read_text(errors="replace")):
            status = (m["status"] or "").lower()
            if status.startswith(("success", "warning")):
                acked += 1
    return SendResult(seconds, acked, len(paths) - acked, codes)


# --------------------------------------------------------------------------
# peers
# --------------------------------------------------------------------------

@dataclass
class PeerResult:
    peer: str
    instances: int
    acknowledged: int = 0
    failed: int = 0
    storescu_exit_codes: list[int] = field(default_factory=list)
    acked_seconds: float | None = None
    acked_per_second: float | None = None
    acked_mb_per_second: float | None = None
    stored: int | None = None  # what the peer itself reports holding
    archived: int | None = None  # cluster: `pacs status` counts.archived_objects
    spool_left: int | None = None  # cluster: spool files not yet handed off at the end
    end_to_end_seconds: float | None = None
    end_to_end_per_second: float | None = None
    note: str = ""

    def fill(self, sent: SendResult, total_bytes: int) -> None:
        self.acknowledged, self.failed = sent.acknowledged, sent.failed
        self.storescu_exit_codes = sent.exit_codes
        self.acked_seconds = sent.seconds
        self.acked_per_second = sent.acknowledged / sent.seconds
        self.acked_mb_per_second = total_bytes * sent.acknowledged / self.instances / 1e6 / sent.seconds


def run_storescp(paths, total_bytes, args, work: Path) -> PeerResult:
    result = PeerResult("storescp", len(paths))
    out = work / "storescp-out"
    out.mkdir()
    port = free_port()
    log = work / "storescp.log"
    # --fork: one process per association, as the other peers serve them in
    # parallel; +B: write the dataset as received (no re-encoding); largest PDU.
    proc = start([STORESCP, "--fork", "-aet", "STORESCP", "-pdu", "131072", "+B", "-od", str(out),
                  str(port)], log)
    try:
        wait_until(lambda: port_open(port), 30, "storescp", proc, log)
        sent = send(paths, port, "STORESCP", args.associations, args.timeout, work)
        result.fill(sent, total_bytes)
        result.stored = sum(1 for p in out.rglob("*") if p.is_file())
        result.note = "no fsync"
    finally:
        stop(proc, 10)
    return result


def run_orthanc(paths, total_bytes, args, work: Path) -> PeerResult:
    result = PeerResult("orthanc", len(paths))
    if not os.access(ORTHANC, os.X_OK):
        result.note = f"skipped: {ORTHANC} not installed (apt-get install orthanc)"
        return result
    home = work / "orthanc"
    home.mkdir()
    dicom_port, http_port = free_port(), free_port()
    config = {
        "Name": "bench",
        "StorageDirectory": str(home / "storage"),
        "IndexDirectory": str(home / "index"),
        "StorageCompression": False,
        "DicomAet": "ORTHANC",
        "DicomPort": dicom_port,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowStore": True,
        "MaximumPduLength": 131072,
        "HttpPort": http_port,
        "HttpServerEnabled": True,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "Plugins": [],
        "LuaScripts": [],
    }
    config_file = home / "orthanc.json"
    config_file.write_text(json.dumps(config, indent=2))
    log = work / "orthanc.log"
    proc = start([ORTHANC, str(config_file)], log, cwd=home)
    base = f"http://127.0.0.1:{http_port}"
    try:
        wait_until(lambda: http_ok(f"{base}/system") and port_open(dicom_port), 60, "Orthanc", proc, log)
        sent = send(paths, dicom_port, "ORTHANC", args.associations, args.timeout, work)
        result.fill(sent, total_bytes)
        with urllib.request.urlopen(f"{base}/statistics", timeout=10) as resp:
            result.stored = int(json.load(resp)["CountInstances"])
        version = json.load(urllib.request.urlopen(f"{base}/system", timeout=10)).get("Version", "?")
        result.note = f"Orthanc {version}, SQLite index"
    finally:
        stop(proc, 30)
    return result


class ClusterDatabase:
    """A fresh PostgreSQL database for one run, dropped afterwards."""

    def __init__(self, server_url: str) -> None:
        import psycopg  # a dependency of the project

        self._psycopg = psycopg
        self.server_url = server_url.rstrip("/")
        self.name = f"pacs_bench_{os.getpid()}_{int(time.time())}"
        self.url = f"{self.server_url}/{self.name}"

    def _admin(self):
        return self._psycopg.connect(f"{self.server_url}/postgres", autocommit=True)

    def create(self) -> None:
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def progress(self) -> tuple[int, int]:
        """(indexed instances, instances with a verified cache copy)."""
        with self._psycopg.connect(self.url, autocommit=True) as conn:
            try:
                row = conn.execute(
                    "SELECT count(*), count(*) FILTER (WHERE EXISTS ("
                    " SELECT 1 FROM object_copies c WHERE c.sha256 = i.sha256"
                    " AND c.tier = 'cache' AND c.verified_at IS NOT NULL))"
                    " FROM instances i").fetchone()
            except self._psycopg.errors.UndefinedTable:  # migrations not run yet
                return 0, 0
        return int(row[0]), int(row[1])


def flush_redis(url: str) -> None:
    import redis  # a dependency of the project

    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def pacs_json(args_: list[str], env: dict[str, str], timeout: float = 60) -> object:
    out = subprocess.run(["pacs", *args_, "--json"], env=env, capture_output=True, text=True,
                         timeout=timeout, check=True)
    return json.loads(out.stdout)


def study_list_instances(doc: object) -> int:
    """Sum num_instances over `pacs study list --json` (a list, or {data: [...]})."""
    studies = doc.get("data", doc.get("studies", [])) if isinstance(doc, dict) else doc
    return sum(int(s.get("num_instances", 0)) for s in studies)


def run_cluster(paths, total_bytes, args, work: Path) -> PeerResult:
    result = PeerResult("cluster", len(paths))
    if shutil.which("pacs") is None:
        result.note = "skipped: `pacs` not on PATH (pip install -e .)"
        return result
    data = work / "pacs-data"
    data.mkdir()
    db = ClusterDatabase(args.postgres)
    broker = f"{args.redis.rstrip('/')}/{args.redis_db}"
    ports = {name: free_port() for name in ("DICOM", "ARCHIVE", "HTTP", "HL7")}
    env = dict(os.environ)
    env.update({
        "PACS_DATA_DIR": str(data),
        "PACS_DATABASE_URL": db.url,
        "PACS_BROKER_URL": broker,
        "PACS_DICOM_HOST": "127.0.0.1",
        "PACS_DICOM_PORT": str(ports["DICOM"]),
        "PACS_DICOM_AE_TITLE": "PACS",
        "PACS_ARCHIVE_HOST": "127.0.0.1",
        "PACS_ARCHIVE_PORT": str(ports["ARCHIVE"]),
        "PACS_HTTP_PORT": str(ports["HTTP"]),
        "PACS_HL7_PORT": str(ports["HL7"]),
    })
    for item in args.env:
        key, _, value = item.partition("=")
        env[key] = value
    log = work / "pacs-up.log"
    proc = None
    created = False
    try:
        flush_redis(broker)
        db.create()
        created = True
        proc = start(["pacs", "up"], log, env=env, cwd=work)
        archive_health = f"http://127.0.0.1:{ports['ARCHIVE']}/healthz"
        wait_until(lambda: port_open(ports["DICOM"]) and http_ok(archive_health), args.start_timeout,
                   "pacs up", proc, log)
        # measure a running cluster, not its start-up: every service process
        # (the gateway's listeners too) must report in first
        wait_until(lambda: all_services_up(env), args.start_timeout, "pacs status", proc, log)
        t0 = time.perf_counter()
        sent = send(paths, ports["DICOM"], "PACS", args.associations, args.timeout, work)
        result.fill(sent, total_bytes)
        # end to end: indexed and with a verified copy in the archive cache tier
        deadline = time.monotonic() + args.timeout
        indexed = archived = 0
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"pacs up exited with {proc.returncode}{_tail(log)}")
            indexed, archived = db.progress()
            if indexed >= sent.acknowledged and archived >= sent.acknowledged:
                elapsed = time.perf_counter() - t0
                result.end_to_end_seconds = elapsed
                result.end_to_end_per_second = archived / elapsed
                break
            time.sleep(0.2)
        else:
            result.note = f"timeout: {indexed} indexed, {archived} archived after {args.timeout:.0f} s"
        # what an operator sees: the index, the archive, and a spool that drains
        # once the archive has confirmed its copies (give it a few seconds)
        with contextlib.suppress(Exception):
            result.stored = study_list_instances(pacs_json(["study", "list"], env))
        if result.stored is not None and result.stored != indexed:
            result.note += f" `pacs study list` shows {result.stored}, database {indexed}"
        spool_deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(Exception):
                status = pacs_json(["status"], env)
                result.archived = int(status["counts"]["archived_objects"])
                result.spool_left = int(status["spool"]["files"])
            if not result.spool_left or time.monotonic() > spool_deadline:
                break
            time.sleep(1)
        if result.spool_left:
            result.note += f" {result.spool_left} files left in the spool"
    finally:
        stop(proc, 60)
        if created:
            with contextlib.suppress(Exception):
                db.drop()
        with contextlib.suppress(Exception):
            flush_redis(broker)
    return result


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------

def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(results: list[PeerResult]) -> str:
    head = f"{'peer':<9} {'acked':>6} {'failed':>6} {'stored':>6} {'acked s':>8} {'inst/s':>8} " \
           f"{'MB/s':>7} {'e2e s':>7} {'e2e/s':>7}  note"
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.peer:<9} {r.acknowledged:>6} {r.failed:>6} {_fmt(r.stored, 'd'):>6} "
            f"{_fmt(r.acked_seconds, '.2f'):>8} {_fmt(r.acked_per_second, '.1f'):>8} "
            f"{_fmt(r.acked_mb_per_second, '.1f'):>7} {_fmt(r.end_to_end_seconds, '.2f'):>7} "
            f"{_fmt(r.end_to_end_per_second, '.1f'):>7}  {r.note}")
    return "\n".join(lines)


def ratios(results: list[PeerResult]) -> dict[str, float]:
    by = {r.peer: r for r in results if r.acked_per_second}
    out: dict[str, float] = {}
    cluster = by.get("cluster")
    if cluster:
        for other in ("storescp", "orthanc"):
            if other in by:
                out[f"cluster/{other}"] = cluster.acked_per_second / by[other].acked_per_second
        if cluster.end_to_end_per_second:
            out["cluster end-to-end/acked"] = cluster.end_to_end_per_second / cluster.acked_per_second
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=2000, help="instances to send (default 2000)")
    parser.add_argument("--associations", type=int, default=4,
                        help="parallel storescu processes, one association each (default 4)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help=f"comma-separated subset of {','.join(PEERS)} (default all)")
    parser.add_argument("--timeout", type=float, default=900,
                        help="seconds allowed for sending, and again for end-to-end (default 900)")
    parser.add_argument("--start-timeout", type=float, default=120,
                        help="seconds allowed for `pacs up` to listen (default 120)")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1",
                        help="PostgreSQL server URL, without database; a fresh database is "
                             "created and dropped (default %(default)s)")
    parser.add_argument("--redis", default="redis://127.0.0.1:6379",
                        help="Redis server URL, without database number (default %(default)s)")
    parser.add_argument("--redis-db", type=int, default=7,
                        help="Redis database number for the broker; flushed before and after (default 7)")
    parser.add_argument("--env", action="append", default=[], metavar="PACS_X=VALUE",
                        help="extra setting for the cluster (repeatable)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="folder for the temporary data (default: system temp)")
    args = parser.parse_args(argv)

    peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    unknown = set(peers) - set(PEERS)
    if unknown or args.instances < 1 or args.associations < 1:
        parser.error(f"bad --peers {sorted(unknown)}" if unknown else "need at least 1 instance and association")
    for tool in (STORESCU, *([STORESCP] if "storescp" in peers else [])):
        if not os.access(tool, os.X_OK):
            parser.error(f"{tool} not found: apt-get install dcmtk")

    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    work_root = Path(tempfile.mkdtemp(prefix="pacs-bench-", dir=args.workdir))
    results: list[PeerResult] = []
    status = 0
    try:
        data = work_root / "data"
        data.mkdir()
        t = time.perf_counter()
        paths = generate(data, args.instances)
        total_bytes = sum(p.stat().st_size for p in paths)
        say(f"generated {len(paths)} CT instances, {total_bytes / 1e6:.1f} MB, "
            f"in {time.perf_counter() - t:.1f} s; {args.associations} parallel storescu")
        runners = {"cluster": run_cluster, "storescp": run_storescp, "orthanc": run_orthanc}
        for peer in peers:
            work = work_root / peer
            work.mkdir()
            say(f"-- {peer}")
            try:
                result = runners[peer](paths, total_bytes, args, work)
            except Exception as exc:  # report it and go on with the other peers
                say(f"   error: {exc}")
                result = PeerResult(peer, len(paths), note=f"error: {str(exc).splitlines()[0]}")
                status = 1
            if result.failed or any(result.storescu_exit_codes):
                status = 1
            results.append(result)
            say(f"   {result.acknowledged} acknowledged, {result.failed} failed"
                + (f" ({result.note})" if result.note else ""))
        report = {
            "instances": len(paths),
            "bytes": total_bytes,
            "associations": args.associations,
            "results": [asdict(r) for r in results],
            "ratios": ratios(results),
        }
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print()
            print(table(results))
            for name, value in report["ratios"].items():
                print(f"{name}: {value:.2f}")
    finally:
        shutil.rmtree(work_root, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
