"""Blob storage backends (a folder, an S3-compatible bucket on a real S3
server, memory): put/get/get_range/delete, content-named keys that never
carry a UID, and put_file that verifies the SHA-256 before it keeps
anything."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.errors import IntegrityError, StorageError
from services.storage import (
    BlobStore, FileSystemStore, MemoryStore, S3Store, object_key, open_store, sha256_file, write_durably,
)
from tests.s3 import ACCESS_KEY, REGION, SECRET_KEY

DATA = bytes(range(256)) * 40 + b"tail"
SHA = hashlib.sha256(DATA).hexdigest()


def s3_store(server, bucket: str, prefix: str = "tier") -> S3Store:
    return S3Store(bucket, prefix, "s3", endpoint_url=server.endpoint, region=REGION, access_key_id=ACCESS_KEY,
                   secret_access_key=SECRET_KEY)


@pytest.fixture(params=["filesystem", "s3", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param == "s3":
        server = request.getfixturevalue("s3_server")
        yield s3_store(server, server.new_bucket())
    else:
        yield FileSystemStore(tmp_path / "tier", "cache") if request.param == "filesystem" else MemoryStore()


def files_under(root: Path) -> list[Path]:
    return [Path(d) / n for d, _, names in os.walk(root) for n in names]


def test_put_get_range_delete(store: BlobStore) -> None:
    key = object_key(SHA)
    assert not store.exists(key)
    store.put(key, DATA)
    assert store.exists(key)
    assert store.get(key) == DATA
    assert store.size(key) == len(DATA)
    assert store.get_range(key, 0, 10) == DATA[:10]
    assert store.get_range(key, 1000, 300) == DATA[1000:1300]
    assert store.get_range(key, len(DATA) - 4, 100) == b"tail"
    assert store.verify(key, SHA)
    assert not store.verify(key, "0" * 64)
    store.put(key, DATA)  # idempotent
    assert store.get(key) == DATA
    store.delete(key)
    assert not store.exists(key)
    store.delete(key)  # deleting what is gone is fine
    with pytest.raises(StorageError):
        store.get(key)


def test_get_missing_is_a_storage_error(store: BlobStore) -> None:
    with pytest.raises(StorageError):
        store.get(object_key("a" * 64))
    if not isinstance(store, MemoryStore):
        with pytest.raises(StorageError):
            store.get_range(object_key("a" * 64), 0, 1)
        with pytest.raises(Exception):
            store.size(object_key("a" * 64))


def test_object_key_is_sharded_and_never_a_uid() -> None:
    key = object_key(SHA)
    assert key == f"{SHA[:2]}/{SHA[2:4]}/{SHA}.dcm"
    for bad in ("1.2.840.113619.2.55.3", "../" + "a" * 61, SHA.upper(), SHA[:-1], SHA + "0", "", "g" * 64):
        with pytest.raises(StorageError):
            object_key(bad)


@pytest.mark.parametrize("key", ["../outside.dcm", "/etc/passwd", "ab/../../outside.dcm"])
def test_filesystem_store_refuses_keys_leaving_its_root(tmp_path: Path, key: str) -> None:
    store = FileSystemStore(tmp_path / "tier")
    with pytest.raises(StorageError):
        store.put(key, b"x")
    assert not (tmp_path / "outside.dcm").exists()


@pytest.mark.parametrize("key", ["../outside.dcm", "/etc/passwd", "ab/../../outside.dcm"])
def test_s3_store_refuses_keys_leaving_its_prefix(s3_server, key: str) -> None:
    bucket = s3_server.new_bucket()
    with pytest.raises(StorageError):
        s3_store(s3_server, bucket).put(key, b"x")
    assert s3_server.keys(bucket) == {}


def test_s3_store_keeps_its_objects_under_its_prefix(s3_server) -> None:
    bucket = s3_server.new_bucket()
    store = open_store(f"s3://{bucket}/web/cache", "webcache", endpoint_url=s3_server.endpoint, region=REGION,
                       access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)
    assert isinstance(store, S3Store)
    store.check()
    store.put("wavelet/1.2.3.pcw", DATA)
    assert s3_server.keys(bucket) == {"web/cache/wavelet/1.2.3.pcw": len(DATA)}
    assert store.get_range("wavelet/1.2.3.pcw", len(DATA), 10) == b"", "a read past the end is empty, as on disk"


def test_s3_store_that_cannot_be_reached_is_a_clear_error(s3_server) -> None:
    with pytest.raises(StorageError, match="s3://no-such-bucket"):
        s3_store(s3_server, "no-such-bucket").check()
    with pytest.raises(StorageError, match="no-such-bucket"):
        s3_store(s3_server, "no-such-bucket").put("x", b"x")
    with pytest.raises(StorageError, match="no bucket"):
        open_store("s3:///prefix", "webcache")


def test_put_file_takes_a_verified_file(store: BlobStore, tmp_path: Path) -> None:
    src = tmp_path / "incoming.dcm"
    src.write_bytes(DATA)
    key = object_key(SHA)
    store.put_file(key, src, SHA)
    assert store.get(key) == DATA
    assert not src.exists(), "the file is taken, not copied"


def test_put_file_refuses_a_mismatch_and_keeps_nothing(store: BlobStore, tmp_path: Path) -> None:
    src = tmp_path / "incoming.dcm"
    src.write_bytes(DATA[:-1] + b"X")  # one byte changed on the way
    key = object_key(SHA)
    with pytest.raises(IntegrityError):
        store.put_file(key, src, SHA)
    assert not store.exists(key)
    assert src.read_bytes() == DATA[:-1] + b"X", "the sender's file must stay as it was"
    if isinstance(store, FileSystemStore):
        assert files_under(store.root) == [], "nothing may be left in the tier"
    if isinstance(store, S3Store):
        assert store._client.list_objects_v2(Bucket=store.bucket).get("KeyCount") == 0


def test_write_durably_leaves_no_temp_file(tmp_path: Path) -> None:
    path, sha, size = write_durably(lambda digest: tmp_path / f"{digest}.dcm", [DATA[:100], DATA[100:]])
    assert (path, sha, size) == (tmp_path / f"{SHA}.dcm", SHA, len(DATA))
    assert path.read_bytes() == DATA
    assert sha256_file(path) == (SHA, len(DATA))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{SHA}.dcm"]


def test_write_durably_failure_leaves_nothing(tmp_path: Path) -> None:
    def chunks() -> Iterator[bytes]:
        yield DATA
        raise OSError("disk gone")

    with pytest.raises((StorageError, OSError)):
        write_durably(tmp_path / "object.dcm", chunks())
    assert list(tmp_path.iterdir()) == []
