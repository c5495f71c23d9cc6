"""The exception tree shared by every service.

    PacsError
    ├── ConfigurationError      a setting is missing or invalid
    ├── InvalidDicomError       a dataset we cannot accept (missing/bad UID, unreadable)
    ├── DuplicateRejectedError  same SOP Instance UID, different object, policy "reject"
    ├── UnknownCallingAEError   calling AE not among the configured nodes
    ├── IntegrityError          a digest did not match what was announced
    ├── StorageError            a blob could not be written or read
    └── TransferError           the archive could not be reached or refused an object

Third-party errors are translated at the boundary (``raise XError(...) from exc``).
"""


class PacsError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigurationError(PacsError):
    pass


class InvalidDicomError(PacsError):
    pass


class DuplicateRejectedError(PacsError):
    pass


class UnknownCallingAEError(PacsError):
    pass


class IntegrityError(PacsError):
    pass


class StorageError(PacsError):
    pass


class TransferError(PacsError):
    pass
