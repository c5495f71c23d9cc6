"""Lossless, resolution-progressive wavelet image codec of the web cache.

``encode(pixels, **options) -> bytes`` turns an integer image into a file
whose chunks run from the coarsest level to full resolution, so that any
prefix ending at a level boundary decodes to that level's image;
``decode(data, level=0)`` returns the image at ``level`` (level k is the
LL band after k reversible 5/3 levels, ceil(rows / 2**k) x ceil(cols / 2**k));
``info(data)`` reads the header and the level index (byte offsets and sizes
of every frame's chunk at every level) so that an HTTP client knows which
byte range holds which level; ``verify(data)`` checks a whole file's
header, index and chunk checksums without decoding it. The format is
docs/wavelet-format.md.

Pixels: (rows, cols) or (rows, cols, samples); with ``frames=True``
(implied by 4 dimensions) (frames, rows, cols) or (frames, rows, cols,
samples). Any integer dtype holding 1..16 stored bits (``bits_stored``,
default 8 or 16 from the dtype; signedness from the dtype). ``decode``
returns the same layout and the same kind and item size of integer, in
native byte order (a big-endian ``>u2`` image comes back ``uint16``, equal
value for value): what a viewer computes with. Options: ``levels`` (default: the
fewest that bring the coarsest level to 64 pixels or less), ``rct``
(reversible colour transform, default on for 3 samples: pass
``rct=False`` for YBR data), ``lossy_psnr`` (CDF 9/7 with a quantiser
step chosen to reach that PSNR; off by default; ``info(data).lossy``),
``value_tables`` (default True: a lossless plane that uses few of the
values in its range is coded as indices into a table of the values it
uses; its coarser levels are then the LL of the indices looked up in
the table).

Errors, all subclasses of :class:`WaveletError`:

- :class:`InvalidInputError` (also a ``ValueError``): bad array, option,
  values outside ``bits_stored``, or a level the file does not have;
- :class:`TruncatedError`: the data ends before the header, the index or
  a chunk the requested level needs;
- :class:`CorruptError`: a checksum or a field does not match;
- :class:`UnsupportedError`: bad magic, unknown format version or flags.

The entropy coder is compiled with numba (cached on disk); the first call
in a fresh environment compiles it (see docs/wavelet-format.md).
"""

from ._codec import decode, default_levels, encode, info
from ._container import MAGIC, VERSION, ChunkInfo, WaveletInfo, verify
from ._errors import CorruptError, InvalidInputError, TruncatedError, UnsupportedError, WaveletError

FORMAT_VERSION = VERSION

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "ChunkInfo",
    "CorruptError",
    "InvalidInputError",
    "TruncatedError",
    "UnsupportedError",
    "WaveletError",
    "WaveletInfo",
    "decode",
    "default_levels",
    "encode",
    "info",
    "verify",
]
