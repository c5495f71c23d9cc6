"""The HTTP side of the transfer protocol, as docker-compose runs it (the
gateway and the archive on separate volumes): objects reach the archive
verified by their Content-Digest, and the endpoint refuses what does not
match without keeping any of it."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import httpx
import pytest
from pydicom.data import get_testdata_file

from tests.cluster import Cluster

FILES = ["CT_small.dcm", "MR_small_RLE.dcm", "JPEG2000.dcm", "emri_small_jpeg_2k_lossless.dcm"]


def _digest(data: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


@pytest.fixture
def http_cluster(make_cluster) -> Cluster:  # noqa: ANN001
    c = make_cluster("postgres", PACS_TRANSFER_MODE="http")
    return c.start()


def test_import_and_export_over_http_transfer(http_cluster: Cluster, tmp_path: Path) -> None:
    c = http_cluster
    files = [Path(get_testdata_file(name)) for name in FILES]
    c.pacs("import", *map(str, files))
    status = c.wait_indexed(len(files))
    assert status["counts"]["archived_objects"] == len(files)
    assert not list((c.data_dir / "archive" / "inbox").glob("*.dcm")), "nothing may wait in the inbox"
    out = tmp_path / "out"
    for study in c.studies():
        c.pacs("export", study["study_instance_uid"], "--out", str(out))
    exported = {p.read_bytes() for p in out.iterdir()}
    # pacs import keeps a Part 10 file exactly as it is
    assert exported == {f.read_bytes() for f in files}


def test_archive_endpoint_checks_digests(http_cluster: Cluster) -> None:
    base = f"http://127.0.0.1:{http_cluster.archive_port}"
    data = os.urandom(4096)
    sha = hashlib.sha256(data).hexdigest()
    other = hashlib.sha256(b"something else").hexdigest()
    with httpx.Client(timeout=30) as client:
        bad_body = client.put(f"{base}/objects/{other}", content=data)
        assert bad_body.status_code == 422
        assert bad_body.headers["content-type"].startswith("application/problem+json")
        assert client.get(f"{base}/objects/{other}").status_code == 404
        mismatch = client.put(f"{base}/objects/{sha}", content=data,
                              headers={"Content-Digest": _digest(b"not the body")})
        assert mismatch.status_code == 400
        assert client.put(f"{base}/objects/..%2F..%2Fetc", content=data).status_code in (400, 404)
        assert client.get(f"{base}/objects/not-a-digest").status_code == 400
        assert client.get(f"{base}/objects/{sha}").status_code == 404

        created = client.put(f"{base}/objects/{sha}", content=data, headers={"Content-Digest": _digest(data)})
        assert created.status_code == 201
        assert client.get(f"{base}/objects/{sha}").content == data
        again = client.put(f"{base}/objects/{sha}", content=data, headers={"Content-Digest": _digest(data)})
        assert again.status_code == 200
    inbox = http_cluster.data_dir / "archive" / "inbox"
    assert not [p for p in inbox.iterdir() if p.name.endswith(".tmp")], "no partial upload is left behind"
