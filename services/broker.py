"""The embedded, server-less broker of ``pacs up``: kombu's filesystem
transport, with messages that appear whole.

kombu's own filesystem transport creates a message file under its final
name and only then writes it; a consumer polling the folder in between
takes an empty or partial message, and the Celery worker dies of it
(``JSONDecodeError``, "Unrecoverable error"), the message lost until a
sweeper finds the work again. Here a producer writes a message under a
hidden temporary name and renames it into the queue folder, and a consumer
claims a message by renaming it into the processed folder (atomic on one
filesystem: two consumers never take the same message), reads it and
deletes it. A message that still cannot be decoded is logged and skipped:
queue messages are hints, the database is the source of truth.

Used for ``filesystem://`` broker URLs by :func:`services.tasks.make_celery`.
"""

from __future__ import annotations

import contextlib
import logging
import os
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


class Channel(filesystem.Channel):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        os.makedirs(self.processed_folder, exist_ok=True)  # where messages are claimed

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
        """The oldest message of ``queue``, claimed by a rename."""
        wanted = f"{queue}.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.partition(".")[2] != wanted:
                continue
            claimed = os.path.join(self.processed_folder, name)
            try:
                os.rename(os.path.join(self.data_folder_in, name), claimed)
            except OSError:
                continue  # another consumer took it first
            try:
                with open(claimed, "rb") as f:
                    payload = f.read()
                os.unlink(claimed)
            except OSError as exc:
                raise ChannelError(f"cannot read message {claimed!r}") from exc
            try:
                return loads(payload)
            except ValueError as exc:
                LOG.error("message %s on queue %s cannot be decoded, skipped: %s", name, queue, exc)
        raise Empty()


class Transport(filesystem.Transport):
    Channel = Channel

    @property
    def default_connection_params(self) -> dict:
        # A folder, not a host: without this kombu warns on every connection
        # that no hostname was supplied.
        return {}
