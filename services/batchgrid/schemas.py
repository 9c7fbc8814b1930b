"""Job requests and job views: the JSON contract of the HTTP API.

The CLI, the API and scheduled jobs all build jobs from these requests, so a
job means the same thing whichever way it arrives.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from batchgrid import tables
from batchgrid.backlog import Backlog
from batchgrid.errors import InputError, StorageUnavailableError
from batchgrid.jobs import JobRecord
from batchgrid.producer import ImagesPlan, TablePlan, plan_images, plan_table
from batchgrid.settings import Settings

__all__ = [
    "ImagesRequest",
    "JobList",
    "JobView",
    "Progress",
    "QueueBacklog",
    "TablesRequest",
    "plan_request",
]

#: Longest path or URL accepted in a request.
MAX_URL_CHARS = 4096
PathText = Annotated[str, Field(min_length=1, max_length=MAX_URL_CHARS)]
ColumnName = Annotated[str, Field(min_length=1, max_length=256)]


class ImagesRequest(BaseModel):
    """Convert images to grayscale."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"sources": ["/data/photos"], "destination": "/data/gray"}]
        },
    )

    sources: list[PathText] = Field(
        min_length=1,
        max_length=1000,
        description="Directories (walked recursively), globs or image files.",
    )
    destination: PathText = Field(description="Output directory.")


class TablesRequest(BaseModel):
    """Aggregate numeric columns of a CSV per group."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"csv": "/data/flights.csv", "by": ["carrier"], "values": ["arr_delay"]}
            ]
        },
    )

    csv: PathText = Field(description="CSV path or URL under a storage root.")
    by: list[ColumnName] = Field(min_length=1, max_length=16)
    values: list[ColumnName] = Field(min_length=1, max_length=64)
    delimiter: str = Field(default=",", min_length=1, max_length=1)
    encoding: str = Field(default="utf-8", min_length=1, max_length=40)
    chunk_bytes: int | None = Field(
        default=None, ge=1, le=1 << 40, description="Bytes per range task."
    )


class Progress(BaseModel):
    done: int
    failed: int
    total: int


class JobView(BaseModel):
    """A job's state and progress; times are Unix seconds."""

    id: str
    kind: Literal["images", "tables"]
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: Progress
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    options: dict[str, Any]

    @classmethod
    def of(cls, record: JobRecord) -> "JobView":
        return cls.model_validate(record.as_dict())


class JobList(BaseModel):
    jobs: list[JobView]
    offset: int
    limit: int


class QueueBacklog(BaseModel):
    """A queue's work: ``backlog`` = ``waiting`` + ``in_flight``, what to scale on."""

    queue: str
    waiting: int = Field(description="Messages in the queue's lists.")
    in_flight: int = Field(
        description="Messages workers hold unacknowledged (prefetched or running)."
    )
    backlog: int = Field(description="Waiting plus in flight.")

    @classmethod
    def of(cls, backlog: Backlog) -> "QueueBacklog":
        return cls(
            queue=backlog.queue,
            waiting=backlog.waiting,
            in_flight=backlog.in_flight,
            backlog=backlog.total,
        )


def plan_request(
    settings: Settings, request: ImagesRequest | TablesRequest
) -> ImagesPlan | TablePlan:
    """Plan the job a request asks for (reads storage, not the broker).

    Storage that refuses a read (permissions, a missing bucket) is the input's
    problem here: an InputError that names what failed. Storage that does not
    answer is not: StorageUnavailableError, worth a retry.
    """
    try:
        if isinstance(request, ImagesRequest):
            return plan_images(settings, request.sources, request.destination)
        dialect = tables.CsvDialect(
            delimiter=request.delimiter, encoding=request.encoding
        )
        return plan_table(
            settings,
            request.csv,
            by=request.by,
            values=request.values,
            dialect=dialect,
            chunk_bytes=request.chunk_bytes,
        )
    except (ConnectionError, TimeoutError) as exc:
        raise StorageUnavailableError(
            f"storage did not answer while planning the job ({exc}); try again"
        ) from exc
    except OSError as exc:
        what = (
            request.csv
            if isinstance(request, TablesRequest)
            else ", ".join(request.sources)
        )
        raise InputError(
            f"{what}: storage refused the read ({exc}); check that it exists and "
            "that batchgrid's user may read it"
        ) from exc
