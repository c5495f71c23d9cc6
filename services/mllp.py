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


def frame(message: str, encoding: str = "utf-8") -> bytes:
    return bytes([VT]) + message.encode(encoding, errors="replace") + bytes([FS, CR])


# HL7 table 0211 (MSH-18) → Python codec. UTF-16/32 are left out: their MSH
# is not ASCII, so no receiver can read MSH-18 before knowing the answer.
CHARSETS = {
    "ASCII": "ascii", "UNICODE": "utf-8", "UNICODE UTF-8": "utf-8",
    **{f"8859/{n}": f"iso8859_{n}" for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 15)},
    "ISO IR87": "iso2022_jp", "ISO IR159": "iso2022_jp_2", "ISO IR14": "shift_jis",
    "GB 18030-2000": "gb18030", "KS X 1001": "euc_kr", "BIG-5": "big5",
}


class CharsetError(ValueError):
    """MSH-18 names a character set that is not in :data:`CHARSETS`."""


def codec(charset: str) -> str | None:
    """The Python codec of an HL7 character set name ('' → None)."""
    name = " ".join(charset.split()).upper()
    if not name:
        return None
    if name not in CHARSETS:
        raise CharsetError(f"character set {charset!r} is not one of {', '.join(CHARSETS)}")
    return CHARSETS[name]


def declared_charset(data: bytes) -> str:
    """MSH-18's first repetition, read from the raw bytes (every charset of
    :data:`CHARSETS` keeps the MSH segment's ASCII as it is)."""
    if not data.startswith(b"MSH") or len(data) < 8:
        return ""
    head = data.replace(b"\n", b"\r").split(b"\r", 1)[0].decode("latin-1")
    fields = head.split(head[3])
    if len(fields) < 18:
        return ""
    return fields[17].split(head[5], 1)[0].strip() if len(head) > 5 else fields[17].strip()


def decode_message(data: bytes, default_charset: str = "") -> tuple[str, str]:
    """A message's text and the codec it was read with: MSH-18 when it
    names a character set, else ``default_charset``, else UTF-8 or (bytes
    that are not UTF-8) ISO 8859-1. Raises :class:`CharsetError` for an
    unknown MSH-18 or bytes that are not in the set it names (ASCII, the
    HL7 default, is taken as "not said")."""
    declared = declared_charset(data) or default_charset
    name = codec(declared)
    if name in (None, "ascii"):  # the HL7 default, which many senders name and then exceed
        try:
            return data.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            return data.decode("latin-1"), "iso8859_1"
    try:
        return data.decode(name), name
    except UnicodeDecodeError as exc:
        raise CharsetError(f"the message is not in {declared} "
                           f"(MSH-18): byte {exc.start} is {data[exc.start:exc.start + 1]!r}") from None


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
