"""The package's exception tree (described in ``curator.wavelet``)."""


class WaveletError(Exception):
    """Base of every error raised by ``curator.wavelet``."""


class InvalidInputError(WaveletError, ValueError):
    """The array or the options given to ``encode`` (or the level asked of
    ``decode``) are not acceptable: shape, dtype, values outside
    ``bits_stored``, unknown option."""


class TruncatedError(WaveletError):
    """The data ends before the header, the level index or a chunk the
    requested level needs."""


class CorruptError(WaveletError):
    """A checksum does not match or a field is inconsistent."""


class UnsupportedError(WaveletError):
    """Not a wavelet file of this package (bad magic) or a format version
    or feature this decoder does not implement."""
