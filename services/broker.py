"""The embedded, server-less broker of ``pacs up``: kombu's filesystem
transport, with messages that appear whole.

kombu's own filesystem transport creates a message file under its final
name and only then writes it; a consumer polling the folder in between
takes an empty or partial message, and the Celery worker dies of it
(``JSONDecodeError``, "Unrecoverable error"), the message lost until a
sweeper finds the work again. Here a producer writes a message under a
hidden temporary name and renames it into the queue folder, and a consumer
claims a message by renaming it into the processed folder (atomic on one
filesystem: two consumers never take the same message) under its own
process's mark, and deletes it once the task acknowledges it (Celery's
``acks_late``). A process holds a lock on its mark while it lives; a
process that starts puts the claimed messages of every mark whose lock is
free (its process died: killed, crashed, the machine restarted) back in the
queue, so a task a killed worker was running runs again as soon as a worker
is back. A message that cannot be decoded is logged and skipped: queue
messages are hints, the database is the source of truth.

Used for ``filesystem://`` broker URLs by :func:`services.tasks.make_celery`.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
import uuid
from queue import Empty
from typing import Any, BinaryIO

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps, loads

LOG = logging.getLogger(__name__)


def _write(f: BinaryIO, data: bytes) -> None:
    f.write(data)


_MARK = uuid.uuid4().hex  # this process's claims: processed/<mark>.<message name>
_OWNER: dict[str, int] = {}  # processed folder -> the descriptor holding this process's lock
_OWNER_LOCK = threading.Lock()


def _hold_mark(folder: str) -> None:
    """Lock ``<mark>.owner`` in ``folder`` for the life of this process."""
    with _OWNER_LOCK:
        if folder in _OWNER:
            return
        fd = os.open(os.path.join(folder, f"{_MARK}.owner"), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        _OWNER[folder] = fd


def recover_claims(processed: str, queue_folder: str) -> int:
    """Put back in the queue the messages claimed by processes that died
    (their owner lock is free); returns how many."""
    restored = 0
    for owner in os.listdir(processed):
        mark, _, ext = owner.partition(".")
        if ext != "owner" or mark == _MARK:
            continue
        path = os.path.join(processed, owner)
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError:
            continue  # recovered meanwhile by another process
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its process lives
            for name in os.listdir(processed):
                if name.startswith(mark + ".") and name.endswith(".msg"):
                    with contextlib.suppress(OSError):
                        os.rename(os.path.join(processed, name),
                                  os.path.join(queue_folder, name.partition(".")[2]))
                        restored += 1
            with contextlib.suppress(OSError):
                os.unlink(path)
        finally:
            os.close(fd)
    if restored:
        LOG.warning("%d messages claimed by a process that ended were put back in the queue", restored)
    return restored


class Channel(filesystem.Channel):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        os.makedirs(self.processed_folder, exist_ok=True)  # where messages are claimed
        self._claimed: dict[str, str] = {}  # delivery tag -> claimed file
        _hold_mark(self.processed_folder)
        recover_claims(self.processed_folder, self.data_folder_in)

    def _put(self, queue: str, payload: dict[str, Any], **kwargs: Any) -> None:
        """Put a message on ``queue``: it appears whole or not at all."""
        name = f"{round(time.monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        temp = os.path.join(self.data_folder_out, f".{name}.tmp")  # no queue's name: consumers pass it by
        try:
            with open(temp, "wb") as f:
                _write(f, dumps(payload).encode())
            os.replace(temp, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise ChannelError(f"cannot add message {name!r} to {self.data_folder_out}") from exc

    def _get(self, queue: str) -> dict[str, Any]:
        """The oldest message of ``queue``, claimed by a rename; its file
        stays under this process's mark until the message is acknowledged."""
        wanted = f"{queue}.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.partition(".")[2] != wanted:
                continue
            claimed = os.path.join(self.processed_folder, f"{_MARK}.{name}")
            try:
                os.rename(os.path.join(self.data_folder_in, name), claimed)
            except OSError:
                continue  # another consumer took it first
            try:
                with open(claimed, "rb") as f:
                    payload = f.read()
            except OSError as exc:
                raise ChannelError(f"cannot read message {claimed!r}") from exc
            try:
                message = loads(payload)
            except ValueError as exc:
                LOG.error("message %s on queue %s cannot be decoded, skipped: %s", name, queue, exc)
                self._forget(claimed)
                continue
            tag = message.get("properties", {}).get("delivery_tag") if isinstance(message, dict) else None
            if tag is None:  # nothing will acknowledge it
                self._forget(claimed)
            else:
                self._claimed[tag] = claimed
            return message
        raise Empty()

    def _forget(self, path: str | None) -> None:
        if path:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def basic_ack(self, delivery_tag: str, multiple: bool = False) -> None:
        super().basic_ack(delivery_tag, multiple)
        self._forget(self._claimed.pop(delivery_tag, None))

    def basic_reject(self, delivery_tag: str, requeue: bool = False) -> None:
        super().basic_reject(delivery_tag, requeue)  # requeued: a new message, by _restore
        self._forget(self._claimed.pop(delivery_tag, None))

    def _restore(self, message: Any) -> None:
        """A message put back (rejected, or unacknowledged at shutdown): the
        new message replaces the claim."""
        super()._restore(message)
        self._forget(self._claimed.pop(message.delivery_tag, None))


class Transport(filesystem.Transport):
    Channel = Channel

    @property
    def default_connection_params(self) -> dict:
        # A folder, not a host: without this kombu warns on every connection
        # that no hostname was supplied.
        return {}
