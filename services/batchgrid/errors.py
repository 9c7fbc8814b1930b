"""The error tree: every error batchgrid raises on purpose is a BatchgridError."""

from collections.abc import Sequence

__all__ = [
    "AuthError",
    "BatchgridError",
    "BrokerUnavailableError",
    "ColumnNotFoundError",
    "ConfigError",
    "InputError",
    "JobNotFoundError",
    "JobStateError",
    "PathOutsideRootsError",
    "StorageUnavailableError",
]


class BatchgridError(Exception):
    """Root of the errors batchgrid raises; the message says the cause and the fix."""


class ConfigError(BatchgridError):
    """Raised when settings contradict each other or name something unusable."""


class InputError(BatchgridError):
    """Raised when a job's input cannot be used as given (missing, empty, bad form)."""


class PathOutsideRootsError(InputError):
    """Raised when a path or URL lies outside every configured storage root."""


class ColumnNotFoundError(InputError):
    """Raised when a CSV lacks a column the job asks for; ``missing`` names them."""

    def __init__(self, message: str, *, missing: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.missing = list(missing)


class BrokerUnavailableError(BatchgridError):
    """Raised when the broker or the job store cannot be reached."""


class StorageUnavailableError(BatchgridError):
    """Raised when storage does not answer for a moment; trying again may work."""


class JobNotFoundError(BatchgridError):
    """Raised when no job with the given id is known (never existed or expired)."""


class JobStateError(InputError):
    """Raised when a job is not in the state a request needs (its result asked for
    before it finished, or a cancel after it ended)."""


class AuthError(BatchgridError):
    """Raised when the producer refuses the request's bearer token."""
