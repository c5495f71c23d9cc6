"""The progressive container: header, level index, chunk framing
(docs/wavelet-format.md)."""

from __future__ import annotations

import struct
import math
import zlib
from dataclasses import dataclass

from ._errors import CorruptError, TruncatedError, UnsupportedError

MAGIC = b"PCWV"
VERSION = 3

FLAG_SIGNED = 1
FLAG_RCT = 2
FLAG_LOSSY = 4
FLAG_FRAME_AXIS = 8
FLAG_SAMPLE_AXIS = 16
_KNOWN_FLAGS = 31

_HEADER = struct.Struct("<4sBBBBBBHIIIdff")  # 40 bytes
_ENTRY = struct.Struct("<QII")  # offset, size, crc32
_CRC = struct.Struct("<I")
HEADER_SIZE = _HEADER.size


@dataclass(frozen=True)
class ChunkInfo:
    """One chunk: the data of one frame at one level."""

    frame: int
    level: int
    offset: int
    size: int
    crc32: int

    @property
    def end(self) -> int:
        return self.offset + self.size


@dataclass(frozen=True)
class WaveletInfo:
    """What ``info`` reads from a file's header and level index."""

    version: int
    rows: int
    cols: int
    frames: int
    samples: int
    bits_stored: int
    signed: bool
    itemsize: int
    levels: int
    rct: bool
    lossy: bool
    quant_step: float
    target_psnr: float
    recon_offset: float
    frame_axis: bool
    sample_axis: bool
    index_end: int
    chunks: tuple[ChunkInfo, ...]  # in file order: level-major, coarse first

    @property
    def dtype(self) -> str:
        return f"{'i' if self.signed else 'u'}{self.itemsize}"

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the array ``decode(data)`` returns."""
        return self.level_shape(0)

    def level_shape(self, level: int) -> tuple[int, ...]:
        r, c = self.rows, self.cols
        for _ in range(level):
            r, c = (r + 1) // 2, (c + 1) // 2
        shape: tuple[int, ...] = (r, c)
        if self.frame_axis:
            shape = (self.frames, *shape)
        if self.sample_axis:
            shape = (*shape, self.samples)
        return shape

    def chunk(self, frame: int, level: int) -> ChunkInfo:
        return self.chunks[(self.levels - level) * self.frames + frame]

    def level_end(self, level: int) -> int:
        """Bytes of the file a decoder needs for ``level`` (all frames):
        the prefix ``data[:level_end(level)]`` decodes at that level."""
        return self.chunk(self.frames - 1, level).end

    @property
    def size(self) -> int:
        return self.level_end(0)


def pack(fields: dict, chunk_blobs: list[list[bytes]]) -> bytes:
    """Assemble a file; ``chunk_blobs[frame][level]`` are the chunk bytes."""
    frames, levels = fields["frames"], fields["levels"]
    header = _HEADER.pack(
        MAGIC,
        VERSION,
        fields["flags"],
        fields["bits_stored"],
        fields["itemsize"],
        levels,
        fields["samples"],
        0,
        fields["rows"],
        fields["cols"],
        frames,
        fields["quant_step"],
        fields["target_psnr"],
        fields["recon_offset"],
    )
    index_end = HEADER_SIZE + (levels + 1) * frames * _ENTRY.size + _CRC.size
    entries = []
    order = []
    offset = index_end
    for level in range(levels, -1, -1):
        for frame in range(frames):
            blob = chunk_blobs[frame][level]
            entries.append(_ENTRY.pack(offset, len(blob), zlib.crc32(blob)))
            order.append(blob)
            offset += len(blob)
    head = header + b"".join(entries)
    return b"".join([head, _CRC.pack(zlib.crc32(head)), *order])


def parse(data: bytes | bytearray | memoryview) -> WaveletInfo:
    data = memoryview(data)
    if len(data) < 5:
        raise TruncatedError(f"{len(data)} bytes: shorter than the wavelet header")
    if bytes(data[:4]) != MAGIC:
        raise UnsupportedError("not a wavelet file (bad magic)")
    if data[4] != VERSION:
        raise UnsupportedError(f"format version {data[4]} is not supported (this decoder reads {VERSION})")
    if len(data) < HEADER_SIZE:
        raise TruncatedError(f"{len(data)} bytes: shorter than the {HEADER_SIZE}-byte header")
    (_, version, flags, bits, itemsize, levels, samples, reserved, rows, cols, frames, step, psnr, delta) = (
        _HEADER.unpack_from(data, 0)
    )
    if flags & ~_KNOWN_FLAGS or reserved:
        raise UnsupportedError(f"unknown header flags {flags:#x}/{reserved:#x}")
    index_end = HEADER_SIZE + (levels + 1) * frames * _ENTRY.size + _CRC.size
    if frames == 0 or frames > 1 << 20:
        raise CorruptError(f"implausible frame count {frames}")
    if len(data) < index_end:
        raise TruncatedError(f"{len(data)} bytes: the level index ends at byte {index_end}")
    (crc,) = _CRC.unpack_from(data, index_end - _CRC.size)
    if zlib.crc32(data[: index_end - _CRC.size]) != crc:
        raise CorruptError("header checksum mismatch")
    if not (1 <= bits <= 16 and itemsize in (1, 2, 4, 8) and bits <= 8 * itemsize and 1 <= samples and rows and cols):
        raise UnsupportedError(f"unsupported image description: {bits} bits, itemsize {itemsize}, {samples} samples")
    if levels > 30 or (flags & FLAG_RCT and samples != 3):
        raise CorruptError("inconsistent header (levels or colour transform)")
    if flags & FLAG_LOSSY:
        if not (math.isfinite(step) and step > 0 and math.isfinite(delta)):
            raise CorruptError(f"lossy file with quantiser step {step}, reconstruction offset {delta}")
    elif step or psnr or delta:
        raise CorruptError("lossless file with lossy parameters")
    chunks = []
    expect = index_end
    pos = HEADER_SIZE
    for level in range(levels, -1, -1):
        for frame in range(frames):
            offset, size, ccrc = _ENTRY.unpack_from(data, pos)
            pos += _ENTRY.size
            if offset != expect:
                raise CorruptError(f"chunk of frame {frame}, level {level} at {offset}, expected {expect}")
            expect += size
            chunks.append(ChunkInfo(frame, level, offset, size, ccrc))
    return WaveletInfo(
        version=version,
        rows=rows,
        cols=cols,
        frames=frames,
        samples=samples,
        bits_stored=bits,
        signed=bool(flags & FLAG_SIGNED),
        itemsize=itemsize,
        levels=levels,
        rct=bool(flags & FLAG_RCT),
        lossy=bool(flags & FLAG_LOSSY),
        quant_step=step,
        target_psnr=psnr,
        recon_offset=delta,
        frame_axis=bool(flags & FLAG_FRAME_AXIS),
        sample_axis=bool(flags & FLAG_SAMPLE_AXIS),
        index_end=index_end,
        chunks=tuple(chunks),
    )


def chunk_bytes(data, chunk: ChunkInfo) -> memoryview:
    """The verified bytes of ``chunk``."""
    data = memoryview(data)
    if len(data) < chunk.end:
        raise TruncatedError(
            f"data ends at byte {len(data)}; frame {chunk.frame} level {chunk.level} needs bytes up to {chunk.end}"
        )
    blob = data[chunk.offset : chunk.end]
    if zlib.crc32(blob) != chunk.crc32:
        raise CorruptError(f"checksum mismatch in the chunk of frame {chunk.frame}, level {chunk.level}")
    return blob


def verify(data) -> WaveletInfo:
    """Check a whole file without decoding it: the header and level index
    (``parse``), every chunk's CRC-32, and no bytes past the last chunk."""
    hdr = parse(data)
    for chunk in hdr.chunks:
        chunk_bytes(data, chunk)
    if len(data) > hdr.size:
        raise CorruptError(f"{len(data) - hdr.size} bytes after the last chunk")
    return hdr
