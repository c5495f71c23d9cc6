"""HL7 v2 over MLLP (HL7 v2.5.1 Appendix C): framing, escaping, and one
message-and-ACK exchange as a client.

A frame is ``<VT> message <FS><CR>``. :class:`FrameReader` cuts a byte
stream into frames: a message may arrive split over many reads, several may
come in one read, bytes outside a frame are dropped, and a frame longer than
its limit raises :class:`FrameTooLarge`.
"""

from __future__ import annotations

import socket
from datetime import datetime, timezone

VT, FS, CR = 0x0B, 0x1C, 0x0D


class FrameTooLarge(Exception):
    pass


class MllpError(Exception):
    """The peer could not be reached, or did not answer with a frame."""


class FrameReader:
    """Cuts a byte stream into MLLP frames."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        frames = []
        while True:
            start = self.buf.find(VT)
            if start < 0:
                self.buf.clear()  # nothing but bytes outside a frame
                return frames
            if start:
                del self.buf[:start]
            end = self.buf.find(bytes([FS, CR]), 1)
            if end < 0:
                if len(self.buf) > self.max_bytes + 1:
                    raise FrameTooLarge(f"an HL7 message longer than {self.max_bytes} bytes")
                return frames
            frames.append(bytes(self.buf[1:end]))
            del self.buf[:end + 2]


def frame(message: str) -> bytes:
    return bytes([VT]) + message.encode("utf-8") + bytes([FS, CR])


def escape(text: str) -> str:
    """HL7 escape sequences for the delimiters (v2.5 §2.7); line breaks become spaces."""
    return (text.replace("\\", "\\E\\").replace("|", "\\F\\").replace("^", "\\S\\")
            .replace("&", "\\T\\").replace("~", "\\R\\").replace("\r", " ").replace("\n", " "))


def xpn(person_name: str) -> str:
    """A DICOM PN (family^given^middle^prefix^suffix, alphabetic group) as
    an HL7 XPN (family^given^middle^suffix^prefix), each part escaped."""
    parts = (person_name.split("=")[0].split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (escape(p) for p in parts)
    return "^".join((family, given, middle, suffix, prefix)).rstrip("^")


def hl7_timestamp(when: datetime | None = None) -> str:
    """An HL7 TS in UTC: YYYYMMDDHHMMSS+0000."""
    return (when or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y%m%d%H%M%S+0000")


def exchange(host: str, port: int, message: str, timeout: float = 10.0,
             max_bytes: int = 1 << 20) -> str:
    """Send one message and return the first frame the peer answers with."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(frame(message))
            reader = FrameReader(max_bytes)
            while True:
                data = sock.recv(65536)
                if not data:
                    raise MllpError(f"{host}:{port} closed the connection without an answer")
                frames = reader.feed(data)
                if frames:
                    return frames[0].decode("utf-8", errors="replace")
    except FrameTooLarge as exc:
        raise MllpError(f"{host}:{port} answered with {exc}") from exc
    except OSError as exc:
        raise MllpError(f"{host}:{port}: {exc.strerror or exc}") from exc
