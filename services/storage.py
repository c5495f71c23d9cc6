"""DICOM-agnostic blob storage: ``put``, ``get``, ``get_range``, ``delete``.

Keys are opaque relative paths made by :func:`object_key` from a SHA-256, so
no raw UID ever reaches a path. Backends: :class:`FileSystemStore` (fsync'd,
atomic rename), :class:`S3Store` (any S3-compatible object storage: AWS,
MinIO, Ceph RGW; needs the ``s3`` extra) and :class:`MemoryStore` for unit
tests. :func:`open_store` makes one from a location: a folder or
``s3://bucket/prefix``.
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

    def check(self) -> None:
        """Raise :class:`StorageError` if the store cannot be reached."""


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


class S3Store(BlobStore):
    """Objects in an S3-compatible bucket, under ``prefix``.

    A PUT is atomic and durable once S3 answers it, so ``put`` has the same
    meaning as on a filesystem; ``put_file`` sends the SHA-256 with the
    object (``x-amz-checksum-sha256``), which the server verifies.
    Credentials and region come from the settings or boto3's usual chain
    (environment, instance profile)."""

    def __init__(self, bucket: str, prefix: str = "", name: str = "s3", *, endpoint_url: str = "",
                 region: str = "", access_key_id: str = "", secret_access_key: str = "") -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError as exc:  # pragma: no cover - depends on the installation
            raise StorageError("S3 storage needs boto3: pip install 'pacs-cluster[s3]'") from exc
        self.bucket, self.name = bucket, name
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._client = boto3.client(
            "s3", endpoint_url=endpoint_url or None, region_name=region or None,
            aws_access_key_id=access_key_id or None, aws_secret_access_key=secret_access_key or None,
            config=Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=60))
        from botocore.exceptions import BotoCoreError, ClientError
        self._errors = (BotoCoreError, ClientError)

    def check(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except self._errors as exc:
            raise StorageError(f"cannot reach bucket s3://{self.bucket}: {exc}") from exc

    def _key(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise StorageError(f"bad key {key!r}")
        return self.prefix + key

    def _call(self, what: str, key: str, method: str, **kwargs):
        try:
            return getattr(self._client, method)(Bucket=self.bucket, Key=self._key(key), **kwargs)
        except self._errors as exc:
            raise StorageError(f"cannot {what} s3://{self.bucket}/{self._key(key)}: {exc}") from exc

    def put(self, key: str, data: bytes) -> None:
        self._call("write", key, "put_object", Body=data)

    def put_file(self, key: str, path: Path, sha256: str) -> None:
        import base64
        if sha256_file(path)[0] != sha256:
            raise IntegrityError(f"{Path(path).name}: SHA-256 differs from announced {sha256}")
        with open(path, "rb") as fh:
            self._call("write", key, "put_object", Body=fh,
                       ChecksumSHA256=base64.b64encode(bytes.fromhex(sha256)).decode())
        Path(path).unlink(missing_ok=True)

    def get(self, key: str) -> bytes:
        return self._call("read", key, "get_object")["Body"].read()

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if length <= 0:
            return b""
        try:
            reply = self._call("read", key, "get_object", Range=f"bytes={start}-{start + length - 1}")
        except StorageError as exc:
            if "InvalidRange" in str(exc):  # starts at or after the end, as a file read would
                return b""
            raise
        return reply["Body"].read()

    def exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except self._errors as exc:
            if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise StorageError(f"cannot look up s3://{self.bucket}/{self._key(key)}: {exc}") from exc
        return True

    def delete(self, key: str) -> None:
        self._call("delete", key, "delete_object")

    def size(self, key: str) -> int:
        return int(self._call("look up", key, "head_object")["ContentLength"])


def open_store(location: str, name: str, *, endpoint_url: str = "", region: str = "", access_key_id: str = "",
               secret_access_key: str = "") -> BlobStore:
    """A store from its location: ``s3://bucket[/prefix]`` or a folder."""
    if location.startswith("s3://"):
        bucket, _, prefix = location[len("s3://"):].partition("/")
        if not bucket:
            raise StorageError(f"no bucket in {location!r}")
        return S3Store(bucket, prefix, name, endpoint_url=endpoint_url, region=region,
                       access_key_id=access_key_id, secret_access_key=secret_access_key)
    return FileSystemStore(Path(location), name)
