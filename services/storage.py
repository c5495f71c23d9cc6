"""DICOM-agnostic blob storage: ``put``, ``get``, ``get_range``, ``delete``.

Keys are opaque relative paths made by :func:`object_key` from a SHA-256, so
no raw UID ever reaches a path. Backends: :class:`FileSystemStore` (fsync'd,
atomic rename) and :class:`MemoryStore` for unit tests. Object stores
(S3-compatible) fit the same interface.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path

from services.errors import IntegrityError, PacsError, StorageError

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
CHUNK = 1 << 20
_tmp_counter = itertools.count()


def object_key(sha256: str) -> str:
    """Sharded key of an object: ``ab/cd/abcd…``."""
    if not _SHA_RE.match(sha256):
        raise StorageError(f"not a SHA-256 digest: {sha256[:80]!r}")
    return f"{sha256[:2]}/{sha256[2:4]}/{sha256}.dcm"


def sha256_file(path: Path) -> tuple[str, int]:
    """SHA-256 and size of a file."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(dest: Path | Callable[[str], Path], chunks: Iterable[bytes]) -> tuple[Path, str, int]:
    """Write ``chunks`` through a temp file: SHA-256 while writing, fsync,
    rename, fsync of the folder. ``dest`` is the final path, or a function
    of the SHA-256 giving it (content-named files). Returns (path, sha256, size)."""
    folder = dest.parent if isinstance(dest, Path) else None
    tmp_dir = folder or Path(dest("0" * 64)).parent
    tmp_dir.mkdir(parents=True, exist_ok=True)
    tmp = tmp_dir / f".{os.getpid()}.{threading.get_ident()}.{next(_tmp_counter)}.tmp"
    digest = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "wb") as fh:
            for chunk in chunks:
                digest.update(chunk)
                fh.write(chunk)
                size += len(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        sha = digest.hexdigest()
        final = dest if isinstance(dest, Path) else dest(sha)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StorageError(f"cannot write into {tmp_dir}: {exc}") from exc
    return final, sha, size


class BlobStore(ABC):
    """Where objects live on one tier."""

    name: str

    @abstractmethod
    def put(self, key: str, data: bytes) -> None: ...

    @abstractmethod
    def put_file(self, key: str, path: Path, sha256: str) -> None:
        """Take the file at ``path`` (moved or copied), verified against ``sha256``."""

    def put_files(self, items: list[tuple[str, Path, str]], rehash: bool = True) -> dict[str, PacsError]:
        """``put_file`` for many (key, path, sha256); returns the errors by key
        (the others were taken). Backends may skip re-hashing with
        ``rehash=False`` when the caller verified the content otherwise."""
        errors: dict[str, PacsError] = {}
        for key, path, sha256 in items:
            try:
                self.put_file(key, path, sha256)
            except (IntegrityError, StorageError) as exc:
                errors[key] = exc
        return errors

    @abstractmethod
    def get(self, key: str) -> bytes: ...

    @abstractmethod
    def get_range(self, key: str, start: int, length: int) -> bytes: ...

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def size(self, key: str) -> int: ...

    def verify(self, key: str, sha256: str) -> bool:
        return hashlib.sha256(self.get(key)).hexdigest() == sha256


class FileSystemStore(BlobStore):
    def __init__(self, root: Path, name: str = "fs") -> None:
        self.root = Path(root)
        self.name = name
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        if key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"bad key {key!r}")
        return self.root / key

    def put(self, key: str, data: bytes) -> None:
        write_durably(self.path(key), [data])

    def put_file(self, key: str, path: Path, sha256: str) -> None:
        error = self.put_files([(key, path, sha256)]).get(key)
        if error is not None:
            raise error

    def put_files(self, items: list[tuple[str, Path, str]], rehash: bool = True) -> dict[str, PacsError]:
        """Verify and move many files in, then make their new names durable
        with one fsync per folder: one journal commit for the batch.
        ``rehash=False`` when the caller verified the content otherwise."""
        errors: dict[str, PacsError] = {}
        folders: set[Path] = set()
        for key, path, sha256 in items:
            dest = self.path(key)
            actual = sha256_file(path)[0] if rehash else sha256
            if actual != sha256:
                errors[key] = IntegrityError(f"{path.name}: SHA-256 {actual} differs from announced {sha256}")
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(path, dest)
            except OSError:  # another filesystem: copy durably, then drop the source
                try:
                    with open(path, "rb") as fh:
                        write_durably(dest, iter(lambda fh=fh: fh.read(CHUNK), b""))
                except StorageError as exc:
                    errors[key] = exc
                    continue
                path.unlink(missing_ok=True)
                continue
            folders.add(dest.parent)  # the data was fsync'd by whoever wrote it
        for folder in folders:
            fsync_dir(folder)
        return errors

    def get(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except OSError as exc:
            raise StorageError(f"cannot read {key}: {exc}") from exc

    def get_range(self, key: str, start: int, length: int) -> bytes:
        try:
            with open(self.path(key), "rb") as fh:
                fh.seek(start)
                return fh.read(length)
        except OSError as exc:
            raise StorageError(f"cannot read {key}: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def size(self, key: str) -> int:
        return self.path(key).stat().st_size


class MemoryStore(BlobStore):
    """In-memory backend for unit tests."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.blobs: dict[str, bytes] = {}

    def put(self, key: str, data: bytes) -> None:
        self.blobs[key] = bytes(data)

    def put_file(self, key: str, path: Path, sha256: str) -> None:
        data = Path(path).read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise IntegrityError(f"{Path(path).name}: SHA-256 differs from announced {sha256}")
        self.blobs[key] = data
        Path(path).unlink(missing_ok=True)

    def get(self, key: str) -> bytes:
        try:
            return self.blobs[key]
        except KeyError:
            raise StorageError(f"no blob {key}") from None

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self.get(key)[start:start + length]

    def exists(self, key: str) -> bool:
        return key in self.blobs

    def delete(self, key: str) -> None:
        self.blobs.pop(key, None)

    def size(self, key: str) -> int:
        return len(self.get(key))
