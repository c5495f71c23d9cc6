"""The transfer protocol: how an object travels from a spool to the archive
and back out of it.

* **local** — spool and archive cache share a filesystem: the spool file is
  hard-linked into the archive's inbox (``<sha256>.dcm``) and the archive is
  told on queue ``archive`` (SHA-256, size, inode). No byte is copied, so the
  archive verifies identity: the inbox name must be the very inode, of the
  very size, that the sender hashed while writing it; anything else is
  re-hashed.
* **http** — ``PUT {archive}/objects/{sha256}`` with ``Content-Digest:
  sha-256=:…:`` (RFC 9530); the archive hashes while receiving and answers
  201 only once the copy is verified, fsync'd and recorded.

Either way the sender keeps its file until the database shows a verified
copy, so a lost message or a crash costs a resend, never an object.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import httpx

from services.errors import IntegrityError, StorageError, TransferError
from services.settings import Settings, get_settings
from services.storage import CHUNK, FileSystemStore, object_key
from services.tasks import T_ARCHIVE_ACCEPT, send

LOG = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outgoing:
    path: Path
    sha256: str
    size: int


def content_digest(sha256_hex: str) -> str:
    """RFC 9530 ``Content-Digest`` value for a SHA-256 given in hex."""
    return "sha-256=:" + base64.b64encode(bytes.fromhex(sha256_hex)).decode() + ":"


def parse_content_digest(header: str) -> str | None:
    """The SHA-256 (hex) named in a ``Content-Digest`` header, if any."""
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "sha-256" and value.startswith(":") and value.endswith(":"):
            try:
                return base64.b64decode(value[1:-1]).hex()
            except ValueError:
                return None
    return None


def use_local(settings: Settings, spool_dir: Path) -> bool:
    if settings.transfer_mode == "http":
        return False
    inbox = settings.archive_inbox_path
    if settings.transfer_mode == "local":
        inbox.mkdir(parents=True, exist_ok=True)
        return True
    try:
        return inbox.is_dir() and os.stat(inbox).st_dev == os.stat(spool_dir).st_dev
    except OSError:
        return False


def handoff(items: Iterable[Outgoing], settings: Settings | None = None,
            spool_dir: Path | None = None) -> None:
    """Hand objects to the archive. Raises :class:`TransferError` if they
    could not all be handed over (the caller retries later)."""
    settings = settings or get_settings()
    items = list(items)
    if not items:
        return
    if use_local(settings, spool_dir or items[0].path.parent):
        _handoff_local(items, settings)
    else:
        _handoff_http(items, settings)


def _handoff_local(items: list[Outgoing], settings: Settings) -> None:
    inbox = settings.archive_inbox_path
    announced = []
    for item in items:
        target = inbox / f"{item.sha256}.dcm"
        try:
            inode = os.stat(item.path).st_ino
            os.link(item.path, target)
        except FileExistsError:
            pass
        except FileNotFoundError:
            continue  # confirmed and removed meanwhile
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                raise TransferError("spool and archive inbox are on different filesystems") from exc
            raise TransferError(f"cannot link {item.path.name} into the archive inbox: {exc}") from exc
        announced.append([item.sha256, item.size, inode])
    if announced:
        try:
            send(T_ARCHIVE_ACCEPT, announced)
        except Exception as exc:  # noqa: BLE001 - broker down: the resend will retry
            raise TransferError(f"cannot reach the broker: {exc}") from exc


_client: httpx.Client | None = None


def _http() -> httpx.Client:
    global _client
    if _client is None:
        _client = httpx.Client(timeout=httpx.Timeout(60.0, connect=5.0))
    return _client


def _handoff_http(items: list[Outgoing], settings: Settings) -> None:
    base = settings.effective_archive_url
    for item in items:
        try:
            with open(item.path, "rb") as fh:
                resp = _http().put(
                    f"{base}/objects/{item.sha256}",
                    content=iter(lambda: fh.read(CHUNK), b""),
                    headers={"Content-Digest": content_digest(item.sha256),
                             "Content-Length": str(item.size),
                             "Content-Type": "application/dicom"},
                )
        except FileNotFoundError:
            continue
        except httpx.HTTPError as exc:
            raise TransferError(f"archive at {base} unreachable: {exc}") from exc
        if resp.status_code not in (200, 201):
            raise TransferError(f"archive refused {item.sha256[:12]}…: {resp.status_code} {resp.text[:200]}")


def fetch(sha256: str, locator: str | None = None, settings: Settings | None = None) -> bytes:
    """Read an object back from the archive: its cache tier directly when it
    is on this host, else over HTTP."""
    settings = settings or get_settings()
    key = locator or object_key(sha256)
    if settings.cache_path.is_dir():
        store = FileSystemStore(settings.cache_path, "cache")
        if store.exists(key):
            return store.get(key)
    try:
        resp = _http().get(f"{settings.effective_archive_url}/objects/{sha256}")
    except httpx.HTTPError as exc:
        raise TransferError(f"archive unreachable: {exc}") from exc
    if resp.status_code == 404:
        raise StorageError(f"the archive has no object {sha256}")
    if resp.status_code != 200:
        raise TransferError(f"archive answered {resp.status_code} for {sha256}")
    if hashlib.sha256(resp.content).hexdigest() != sha256:
        raise IntegrityError(f"object {sha256} came back with another SHA-256")
    return resp.content
