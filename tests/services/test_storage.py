"""Blob storage backends: put/get/get_range/delete, content-named keys that
never carry a UID, and put_file that verifies the SHA-256 before it keeps
anything."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.errors import IntegrityError, StorageError
from services.storage import BlobStore, FileSystemStore, MemoryStore, object_key, sha256_file, write_durably

DATA = bytes(range(256)) * 40 + b"tail"
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture(params=["filesystem", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
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
    if isinstance(store, FileSystemStore):
        with pytest.raises(StorageError):
            store.get_range(object_key("a" * 64), 0, 1)


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
