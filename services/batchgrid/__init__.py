"""batchgrid: distributed batch work on Celery and Redis.

Two jobs run across many worker processes: converting batches of images and
aggregating CSV files far larger than memory. The CLI (``batchgrid``) and the
job functions below are the public surface.
"""

from batchgrid.errors import (
    AuthError,
    BatchgridError,
    BrokerUnavailableError,
    ColumnNotFoundError,
    ConfigError,
    InputError,
    JobNotFoundError,
    JobStateError,
    PathOutsideRootsError,
    StorageUnavailableError,
)

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
    "__version__",
]

__version__ = "0.1.0"
