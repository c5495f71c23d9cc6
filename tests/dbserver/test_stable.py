"""Stable-study detection on a running cluster: a study becomes stable
PACS_STUDY_STABLE_SECONDS after its last instance, not before; a new
instance re-opens it; a dbserver killed inside the quiet period is
restarted by the supervisor and the study still becomes stable."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from tests.cluster import Cluster

STABLE_SECONDS = 8.0  # long enough to see a study registered, not yet stable, on a loaded machine
SLACK = 0.3  # clock and timestamp rounding between processes


def new_instance_of(study_file: str, folder: Path) -> tuple[Path, str]:
    """A copy of a test file under a fresh SOP Instance UID (same study)."""
    ds = pydicom.dcmread(get_testdata_file(study_file))
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.StudyInstanceUID)


def study(c: Cluster, uid: str) -> dict | None:
    """The study's row, read straight from the index: a CLI start per poll
    (a second or two on a loaded machine) would blur the timings."""
    rows = c.sql("SELECT stable, number_of_study_related_instances, number_of_study_related_series "
                 "FROM studies WHERE study_instance_uid = ?", uid)
    if not rows:
        return None
    stable, instances, series = rows[0]
    return {"stable": bool(stable), "num_instances": instances, "num_series": series}


def quiet_period(c: Cluster, uid: str) -> float:
    """Seconds from the study's last instance to its latest stable-study
    change, as the index recorded them (the services' wall clock)."""
    def when(value: object) -> datetime:
        return value if isinstance(value, datetime) else datetime.fromisoformat(str(value))

    (last,), = c.sql("SELECT last_received_at FROM studies WHERE study_instance_uid = ?", uid)
    (marked,), = c.sql("SELECT max(created_at) FROM changes WHERE change_type = 'stable-study' "
                       "AND resource_uid = ?", uid)
    return (when(marked) - when(last)).total_seconds()


def wait_for(what: str, check: Callable[[], dict | None], timeout: float) -> tuple[dict, float]:
    """Poll until ``check`` returns something; return it and when it was seen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found, time.time()
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout}s")


def test_stable_after_quiet_period_and_reopened_by_new_instance(make_cluster, tmp_path: Path) -> None:
    c = make_cluster("embedded", PACS_STUDY_STABLE_SECONDS=str(STABLE_SECONDS)).start()
    first, uid = new_instance_of("CT_small.dcm", tmp_path / "a")

    sent = time.time()  # the services' clock: stable times are wall-clock times in the index
    c.storescu(first)
    s = study(c, uid) or wait_for("registered", lambda: study(c, uid), 20)[0]
    assert time.time() - sent < STABLE_SECONDS - 1, "too slow to observe the quiet period"
    assert s["stable"] is False and s["num_instances"] == 1
    _, seen = wait_for("stable", lambda: (s := study(c, uid)) and s["stable"] and s, STABLE_SECONDS + 10)
    assert quiet_period(c, uid) >= STABLE_SECONDS, f"marked stable {quiet_period(c, uid):.2f}s after its last instance"
    assert seen - sent >= STABLE_SECONDS - SLACK, f"stable after {seen - sent:.1f}s, before the quiet period"

    # a new instance re-opens the study, and the quiet period starts again
    second, _ = new_instance_of("CT_small.dcm", tmp_path / "b")
    sent = time.time()
    c.storescu(second)
    s, _ = wait_for("second instance registered", lambda: (s := study(c, uid)) and s["num_instances"] == 2 and s,
                    20)
    assert time.time() - sent < STABLE_SECONDS - 1, "too slow to observe the quiet period"
    assert s["stable"] is False, "a new instance must re-open a stable study"
    s, seen = wait_for("stable again", lambda: (s := study(c, uid)) and s["stable"] and s, STABLE_SECONDS + 10)
    assert quiet_period(c, uid) >= STABLE_SECONDS, f"marked stable {quiet_period(c, uid):.2f}s after its last instance"
    assert seen - sent >= STABLE_SECONDS - SLACK, f"stable again after {seen - sent:.1f}s"
    assert s["num_instances"] == 2 and s["num_series"] == 1
    assert c.status()["counts"]["stable_studies"] == 1
    listed = next(s for s in c.studies() if s["study_instance_uid"] == uid)
    assert listed["stable"] is True and listed["num_instances"] == 2


def test_stable_despite_dbserver_killed_in_quiet_period(make_cluster, tmp_path: Path) -> None:
    c = make_cluster("embedded", PACS_STUDY_STABLE_SECONDS=str(STABLE_SECONDS)).start()
    path, uid = new_instance_of("MR_small.dcm", tmp_path)
    old_pids = set(c.pids("dbserver"))
    assert len(old_pids) == 1, old_pids

    sent = time.time()
    c.storescu(path)
    s = study(c, uid) or wait_for("registered", lambda: study(c, uid), 20)[0]
    assert s["stable"] is False
    for pid in old_pids:
        os.kill(pid, signal.SIGKILL)
    killed = time.time()
    assert killed - sent < STABLE_SECONDS, "the kill came after the deadline"

    # the supervisor restarts it: a new dbserver process says it is alive
    new_pids, _ = wait_for("dbserver restarted",
                           lambda: set(c.pids("dbserver")) - old_pids, 30)
    assert new_pids and "restarting" in c.log(), c.log()[-2000:]
    s, seen = wait_for("stable after the restart",
                       lambda: (s := study(c, uid)) and s["stable"] and s, STABLE_SECONDS + 30)
    assert quiet_period(c, uid) >= STABLE_SECONDS
    assert seen - sent >= STABLE_SECONDS - SLACK
    assert s["num_instances"] == 1
    # and it keeps working: a new study on the restarted dbserver becomes stable too
    other, other_uid = new_instance_of("JPEG2000.dcm", tmp_path / "other")
    c.storescu(other)
    wait_for("new study stable", lambda: (s := study(c, other_uid)) and s["stable"] and s, STABLE_SECONDS + 15)
