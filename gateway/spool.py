"""The spool: the gateway's write-ahead log.

Each writer (a gateway process, a ``pacs import``) owns one folder
``SPOOL/<owner>/`` and holds an exclusive ``flock`` on its ``.lock`` while it
lives. A received object is written to a temp file, hashed while written,
fsync'd and renamed to ``<sha256>.dcm``; only then is it acknowledged.
A folder whose lock is free belongs to a writer that died: any live writer
adopts it and delivers what it holds.
"""

from __future__ import annotations

import fcntl
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from services.storage import write_durably

LOG = logging.getLogger(__name__)
SUFFIX = ".dcm"


@dataclass(slots=True)
class SpoolFile:
    path: Path
    sha256: str
    size: int


class SpoolFolder:
    """One owner's folder, locked while this object lives."""

    def __init__(self, root: Path, owner: str, blocking: bool = True) -> None:
        self.path = Path(root) / owner
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock_fh = open(self.path / ".lock", "a+")  # noqa: SIM115 - held for life
        flags = fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(self._lock_fh, flags)
        except BlockingIOError:
            self._lock_fh.close()
            raise
        for stale in self.path.glob(".*.tmp"):  # partial writes of a dead writer were never acked
            stale.unlink(missing_ok=True)

    @classmethod
    def try_adopt(cls, root: Path, owner: str) -> SpoolFolder | None:
        try:
            return cls(root, owner, blocking=False)
        except BlockingIOError:
            return None

    def write(self, chunks: list[bytes]) -> SpoolFile:
        """Write durably; the file is named by its SHA-256."""
        path, sha, size = write_durably(lambda sha: self.path / f"{sha}{SUFFIX}", chunks)
        return SpoolFile(path, sha, size)

    def files(self) -> Iterator[SpoolFile]:
        for path in self.path.glob(f"*{SUFFIX}"):
            sha = path.name[: -len(SUFFIX)]
            if len(sha) != 64:
                continue
            try:
                yield SpoolFile(path, sha, path.stat().st_size)
            except FileNotFoundError:
                continue

    def is_empty(self) -> bool:
        return not any(self.path.glob(f"*{SUFFIX}"))

    def release(self, remove: bool = False) -> None:
        if remove:
            for name in (".lock",):
                (self.path / name).unlink(missing_ok=True)
            try:
                self.path.rmdir()
            except OSError:
                pass
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
        finally:
            self._lock_fh.close()


def owners(root: Path) -> list[str]:
    if not Path(root).is_dir():
        return []
    return sorted(p.name for p in Path(root).iterdir() if p.is_dir())
