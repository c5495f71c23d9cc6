"""A real cluster for end-to-end tests: ``pacs up`` in a temp data folder on
free ports, on the embedded defaults (SQLite + filesystem broker) or on
PostgreSQL + Redis as docker-compose runs it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis as redis_lib
from psycopg.rows import dict_row, tuple_row

from services.heartbeat import running_here

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
REDIS_URL = "redis://127.0.0.1:6379"
DCMTK = Path("/usr/bin")  # pynetdicom installs scripts of the same names on PATH
REDIS_TEST_DBS = range(1, 16)


def claim_redis_db() -> int:
    """A Redis database number no other running test cluster uses (claimed
    with a key in database 0 that expires, in case a run dies)."""
    client = redis_lib.Redis.from_url(f"{REDIS_URL}/0")
    for n in REDIS_TEST_DBS:
        if client.set(f"pacs-test:db:{n}", os.getpid(), nx=True, ex=3600):
            return n
    raise RuntimeError("every Redis test database is in use")


def release_redis_db(n: int) -> None:
    redis_lib.Redis.from_url(f"{REDIS_URL}/0").delete(f"pacs-test:db:{n}")


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the test process dies (a
    killed pytest would otherwise leave its clusters running, their workers
    taking messages from Redis databases that later runs claim again)."""
    if sys.platform == "linux":
        import ctypes
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def wait_until(what: Callable[[], Any], timeout: float = 60.0, step: float = 0.3) -> Any:
    """Poll ``what`` until it returns something true, and return that;
    TimeoutError after ``timeout`` seconds. A check that takes long (a
    ``pacs`` command: a second of CPU to start) waits as long again before
    the next, so that polling leaves the cluster under test a core."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        started = time.monotonic()
        value = what()
        if value:
            return value
        time.sleep(max(step, time.monotonic() - started))
    raise TimeoutError(f"not so after {timeout}s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_services() -> bool:
    return os.environ.get("PACS_TEST_REQUIRE_SERVICES") == "1" or os.environ.get("CI") == "true"


def postgres_available() -> bool:
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def redis_available() -> bool:
    try:
        return bool(redis_lib.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping())
    except redis_lib.RedisError:
        return False


def need_backends() -> None:
    missing = [name for name, ok in (("PostgreSQL", postgres_available()), ("Redis", redis_available())) if not ok]
    if missing:
        message = f"{' and '.join(missing)} not reachable on 127.0.0.1"
        if require_services():
            pytest.fail(message)
        pytest.skip(message)


def pg_url(name: str) -> str:
    """The URL of test database ``name`` on the local PostgreSQL."""
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


def create_pg_database() -> str:
    name = f"pacs_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return name


def drop_pg_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Cluster:
    """One cluster under ``pacs up``. ``backend`` is ``embedded`` or ``postgres``."""

    root: Path
    backend: str = "embedded"
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    pg_db: str | None = None
    redis_db: int | None = None

    def __post_init__(self) -> None:
        self.data_dir = self.root / "data"
        self.dicom_port = free_port()
        self.archive_port = free_port()
        self.http_port = free_port()
        self.hl7_port = free_port()
        self.log_path = self.root / "pacs-up.log"
        # no COLUMNS: the commands write into a pipe, as a script reads them
        self.env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        self.env.update({
            "PACS_DATA_DIR": str(self.data_dir),
            "PACS_DICOM_PORT": str(self.dicom_port),
            "PACS_ARCHIVE_PORT": str(self.archive_port),
            "PACS_HTTP_PORT": str(self.http_port),
            "PACS_HL7_PORT": str(self.hl7_port),
            "PACS_STUDY_STABLE_SECONDS": "2",
            "PACS_SPOOL_RESEND_SECONDS": "5",
            # resends every 5 s may leave a second link in the archive inbox; the sweep takes it up
            "PACS_ARCHIVE_INBOX_STALE_SECONDS": "10",
            "PYTHONUNBUFFERED": "1",
        })
        if self.backend == "postgres":
            self.pg_db = create_pg_database()
            self.redis_db = claim_redis_db()
            redis_lib.Redis.from_url(f"{REDIS_URL}/{self.redis_db}").flushdb()
            self.env["PACS_DATABASE_URL"] = pg_url(self.pg_db)
            self.env["PACS_BROKER_URL"] = f"{REDIS_URL}/{self.redis_db}"
        self.env.update(self.extra_env)

    # --- lifecycle -------------------------------------------------------------
    def start(self, timeout: float = 60.0) -> Cluster:
        self._log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen([sys.executable, "-m", "admin.cli", "up"], env=self.env,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=_die_with_parent)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"pacs up exited early:\n{self.log()}")
            if {"gateway", "archive", "dbserver", "curator"} <= self._running_services() and self.echo():
                return
            time.sleep(0.3)
        raise TimeoutError(f"cluster not ready in {timeout}s:\n{self.log()[-4000:]}")

    def sql(self, query: str, *params: Any, dicts: bool = False) -> list[Any]:
        """Rows of one statement on the cluster's own database (SQLite file or
        PostgreSQL), committed. ``?`` placeholders on both; rows as tuples,
        or as dicts with ``dicts=True``."""
        if self.pg_db:
            with psycopg.connect(pg_url(self.pg_db), connect_timeout=5,
                                 row_factory=dict_row if dicts else tuple_row) as db:
                cur = db.execute(query.replace("?", "%s"), params)
                return cur.fetchall() if cur.description else []
        db = sqlite3.connect(self.data_dir / "pacs.db", timeout=30)
        try:
            if dicts:
                db.row_factory = sqlite3.Row
            with db:
                rows = db.execute(query, params).fetchall()
            return [dict(r) for r in rows] if dicts else rows
        finally:
            db.close()

    def _running_services(self) -> set[str]:
        """Services with a heartbeat row whose process runs (read straight
        from the database: polling ``pacs status`` would load the machine
        while the cluster starts)."""
        if not self.pg_db and not (self.data_dir / "pacs.db").exists():
            return set()
        try:
            rows = self.sql("SELECT service, host, pid FROM service_heartbeats")
        except (psycopg.Error, sqlite3.Error):
            return set()
        return {service for service, host, pid in rows if running_here(host, pid)}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """Every process of the cluster at once (SIGKILL): the end of a test
        that needs no orderly stop, without Celery's warm shutdown (up to a
        broker poll of 2 s per worker)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def destroy(self) -> None:
        self.kill()
        if self.pg_db:
            drop_pg_database(self.pg_db)
            self.pg_db = None
        if self.redis_db is not None:
            redis_lib.Redis.from_url(f"{REDIS_URL}/{self.redis_db}").flushdb()
            release_redis_db(self.redis_db)
            self.redis_db = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # --- commands ---------------------------------------------------------------
    def pacs(self, *args: str, check: bool = True, timeout: float = 300,
             input: str | None = None) -> subprocess.CompletedProcess:  # noqa: A002 - subprocess's name
        return subprocess.run([sys.executable, "-m", "admin.cli", *args], env=self.env, capture_output=True,
                              text=True, check=check, timeout=timeout, input=input)

    def pacs_json(self, *args: str) -> Any:
        return json.loads(self.pacs(*args, "--json").stdout)

    def status(self) -> dict[str, Any]:
        return self.pacs_json("status")

    def pids(self, service: str) -> list[int]:
        return [p["pid"] for p in self.status()["services"][service]["processes"] if p["service"] == service]

    def echo(self) -> bool:
        res = subprocess.run([str(DCMTK / "echoscu"), "-to", "5", "-aec", "PACS", "127.0.0.1",
                              str(self.dicom_port)], capture_output=True)
        return res.returncode == 0

    def storescu(self, *files: Path | str, aet: str = "STORESCU", extra: tuple[str, ...] = (),
                 check: bool = True) -> subprocess.CompletedProcess:
        """dcmtk storescu. dcmtk proposes a compressed transfer syntax only
        when told which, so files are sent in groups, one per transfer syntax,
        each with its ``-x`` option. Returns the last run."""
        env = dict(self.env, TCP_NODELAY="1")
        groups: dict[str, list[str]] = {}
        for f in files:
            groups.setdefault(storescu_option(Path(f)), []).append(str(f))
        res = None
        for option, group in groups.items():
            res = subprocess.run([str(DCMTK / "storescu"), option, "-aet", aet, "-aec", "PACS", *extra,
                                  "127.0.0.1", str(self.dicom_port), *group],
                                 capture_output=True, text=True, env=env, timeout=600)
            if check and res.returncode != 0:
                raise AssertionError(f"storescu {option} failed ({res.returncode}):\n{res.stderr[-3000:]}")
        assert res is not None
        return res

    def studies(self) -> list[dict[str, Any]]:
        return self.pacs_json("study", "list")

    def wait_indexed(self, n_instances: int, timeout: float = 120.0, archived: bool = True) -> dict[str, Any]:
        """Wait until the index holds ``n_instances`` and (by default) each
        has a verified cache copy and the spool is empty; returns ``pacs
        status --json`` then. Polled with one SQL query and a look at the
        spool folder: a ``pacs status`` every half second would keep one of
        the machine's cores busy starting Python."""
        def done(instances: int, copies: int, spooled: int) -> bool:
            return instances >= n_instances and (not archived or (copies >= n_instances and spooled == 0))

        deadline = time.monotonic() + timeout
        status: dict[str, Any] = {}
        while time.monotonic() < deadline:
            if done(*self._progress()):
                status = self.status()
                c = status["counts"]
                if done(c["instances"], c["archived_objects"], status["spool"]["files"]):
                    return status
            time.sleep(0.3)
        raise TimeoutError(f"not indexed in {timeout}s: {status or self._progress()}\n{self.log()[-3000:]}")

    def _progress(self) -> tuple[int, int, int]:
        """Instances indexed, verified cache copies, files in the spool."""
        try:
            (instances,), = self.sql("SELECT count(*) FROM instances")
            (copies,), = self.sql("SELECT count(*) FROM object_copies WHERE tier = 'cache' AND verified_at IS NOT NULL")
        except (psycopg.Error, sqlite3.Error):  # the schema not there yet
            return 0, 0, 0
        spool = Path(self.env.get("PACS_SPOOL_DIR") or self.data_dir / "spool")
        spooled = sum(name.endswith(".dcm") for _, _, names in os.walk(spool) for name in names)
        return instances, copies, spooled


_TS_OPTION = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}


def transfer_syntax(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def storescu_option(path: Path) -> str:
    """The dcmtk storescu option proposing this file's transfer syntax."""
    ts = transfer_syntax(path)
    try:
        return _TS_OPTION[ts]
    except KeyError:
        raise ValueError(f"dcmtk storescu cannot propose {ts} ({path.name})") from None


def dataset_bytes(path: Path) -> bytes:
    """The encoded dataset of a Part 10 file, without preamble and file meta."""
    from services.dicom import file_meta_end

    data = Path(path).read_bytes()
    if len(data) >= 132 and data[128:132] == b"DICM":
        return data[file_meta_end(data):]
    return data


def cleanup_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
