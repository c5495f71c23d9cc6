"""Nothing acknowledged is ever lost (DESIGN.md, invariants): while modalities
send, one service of a PostgreSQL + Redis cluster is killed with SIGKILL and
restarted by ``pacs up``. Every instance that got Success must end up indexed
exactly once and archived with a verified copy equal to what was sent.

The senders behave like modalities: an instance whose C-STORE got no
Success (association cut, failure status) is sent again."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config

from services.dicom import file_meta_end
from tests.cluster import Cluster
from tests.dicomdata import ct_dataset, write_part10

N_INSTANCES = 500
N_SENDERS = 4
KILL_AFTER = 150  # successes before the kill: in the middle of the send
SEND_DEADLINE = 60.0
SETTLE_TIMEOUT = 60.0
SUCCESS = 0x0000


# --- synthetic instances ----------------------------------------------------------------------
def make_instances(folder: Path, n: int) -> dict[str, tuple[Path, bytes]]:
    """``n`` small CT images (64x64, distinct UIDs, 5 studies) as Part 10
    files: SOP Instance UID -> (file, the encoded dataset sent)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1234)
    studies = [(generate_uid(), generate_uid()) for _ in range(5)]
    out: dict[str, tuple[Path, bytes]] = {}
    for i in range(n):
        study_uid, series_uid = studies[i % len(studies)]
        ds = ct_dataset(f"CRASH-{i % len(studies)}", f"Crash^Test{i % len(studies)}", seed=rng,
                        StudyInstanceUID=study_uid, SeriesInstanceUID=series_uid,
                        SeriesNumber=1, InstanceNumber=i // len(studies) + 1)
        path = folder / f"{i:04d}.dcm"
        out[str(ds.SOPInstanceUID)] = (path, write_part10(path, ds))
    return out


# --- modalities -------------------------------------------------------------------------------------
class Sender(threading.Thread):
    """A modality: sends its instances on one association, re-associates
    when the association is cut, and re-sends what got no Success."""

    def __init__(self, port: int, ae_title: str, items: list[tuple[str, Path]], successes: dict[str, str],
                 lock: threading.Lock, deadline: float) -> None:
        super().__init__(name=ae_title, daemon=True)
        self.port = port
        self.ae_title = ae_title
        self.remaining = list(items)
        self.successes = successes
        self.lock = lock
        self.deadline = deadline
        self.associations = 0
        self.cut = 0  # C-STOREs that got no answer (association aborted or dropped)
        self.failures: list[tuple[str, int, str]] = []  # failure statuses, re-sent later

    def run(self) -> None:
        while self.remaining and time.monotonic() < self.deadline:
            ae = AE(ae_title=self.ae_title)
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
            ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
            try:
                assoc = ae.associate("127.0.0.1", self.port, ae_title="PACS")
            except Exception:  # noqa: BLE001 - the gateway may be down for a while
                assoc = None
            if assoc is None or not assoc.is_established:
                time.sleep(0.2)
                continue
            self.associations += 1
            try:
                self._send_on(assoc)
            finally:
                if assoc.is_established:
                    assoc.release()

    def _send_on(self, assoc: Any) -> None:
        while self.remaining and time.monotonic() < self.deadline:
            uid, path = self.remaining[0]
            try:
                rsp = assoc.send_c_store(path)
            except Exception:  # noqa: BLE001 - association gone under us
                self.cut += 1
                return
            if "Status" not in rsp:
                self.cut += 1
                return
            status = int(rsp.Status)
            if status == SUCCESS:
                with self.lock:
                    self.successes[uid] = self.ae_title
                self.remaining.pop(0)
            else:
                self.failures.append((uid, status, str(rsp.get("ErrorComment", ""))))
                time.sleep(0.2)
            if not assoc.is_established:
                self.cut += 1
                return


# --- the cluster ------------------------------------------------------------------------------------


def service_pids(c: Cluster, service: str) -> list[int]:
    """Every live process of a service (the gateway: its parent and its
    listener processes)."""
    procs = c.status()["services"][service]["processes"]
    return [p["pid"] for p in procs if p["service"].split("-")[0] == service]


def kill9(pids: list[int]) -> list[int]:
    """SIGKILL these cluster processes (checked to be ``pacs serve``)."""
    killed = []
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"admin.cli" in cmdline and b"serve" in cmdline:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
    return killed


def query(c: Cluster, sql: str) -> list[tuple]:
    with psycopg.connect(c.env["PACS_DATABASE_URL"]) as conn:
        return conn.execute(sql).fetchall()


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["gateway", "archive", "dbserver"])
def test_nothing_acknowledged_is_lost_when_a_service_is_killed(pg_cluster: Cluster, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               victim: str) -> None:
    c = pg_cluster
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # send each file's bytes as they are
    instances = make_instances(tmp_path / "send", N_INSTANCES)
    pids = service_pids(c, victim)
    assert pids, f"no {victim} process in pacs status"

    successes: dict[str, str] = {}
    lock = threading.Lock()
    deadline = time.monotonic() + SEND_DEADLINE
    uids = list(instances)
    senders = [Sender(c.dicom_port, f"CRASH{k}", [(u, instances[u][0]) for u in uids[k::N_SENDERS]],
                      successes, lock, deadline) for k in range(N_SENDERS)]
    for s in senders:
        s.start()
    while len(successes) < KILL_AFTER and any(s.is_alive() for s in senders):
        time.sleep(0.005)
    acknowledged_at_kill = len(successes)
    killed = kill9(pids)
    assert killed, f"no {victim} process to kill among {pids}"
    assert acknowledged_at_kill < N_INSTANCES, "the kill came after the send: nothing was tested"
    for s in senders:
        s.join(SEND_DEADLINE + 15)

    report = {s.name: {"associations": s.associations, "cut": s.cut, "failures": s.failures[:5],
                       "left": len(s.remaining)} for s in senders}
    assert len(successes) == N_INSTANCES, f"senders could not store everything after the restart: {report}"
    if victim == "gateway":
        assert sum(s.associations for s in senders) > N_SENDERS, f"the kill cut no association: {report}"

    status = c.wait_indexed(N_INSTANCES, timeout=SETTLE_TIMEOUT)
    restarted = [pid for pid in service_pids(c, victim) if pid not in pids and Path(f"/proc/{pid}").exists()]
    assert restarted, f"{victim} was not restarted"

    # indexed exactly once each
    rows = query(c, "SELECT sop_instance_uid, sha256 FROM instances")
    indexed = dict(rows)
    assert len(rows) == len(indexed) == len(successes), (len(rows), len(indexed), len(successes))
    assert set(indexed) == set(successes)
    assert query(c, "SELECT count(*) FROM superseded_objects") == [(0,)]

    # archived: a verified cache copy whose bytes are what was sent
    copies = {sha: (locator, verified) for sha, locator, verified in query(
        c, "SELECT sha256, locator, verified_at FROM object_copies WHERE tier = 'cache'")}
    cache = c.data_dir / "archive" / "cache"
    for uid, sha in indexed.items():
        assert sha in copies and copies[sha][1] is not None, f"{uid}: no verified archive copy"
        data = (cache / copies[sha][0]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha, f"{uid}: the archived copy does not match its SHA-256"
        assert data[file_meta_end(data):] == instances[uid][1], f"{uid}: archived dataset differs from what was sent"
    assert len(copies) == N_INSTANCES

    counts = status["counts"]
    assert counts["instances"] == counts["archived_objects"] == N_INSTANCES, counts
    assert status["cache"]["files"] == N_INSTANCES, status
    assert status["spool"]["files"] == 0, status
