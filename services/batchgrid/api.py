"""The producer's HTTP API (FastAPI): submit jobs, follow them, fetch results.

``batchgrid serve`` runs it with uvicorn. Example::

    curl -X POST localhost:8000/jobs/tables -H 'content-type: application/json' \\
         -d '{"csv": "/data/flights.csv", "by": ["carrier"], "values": ["arr_delay"]}'
"""

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response, status
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from batchgrid import __version__
from batchgrid.backlog import broker_client, read_backlog
from batchgrid.celery_app import create_app
from batchgrid.errors import (
    AuthError,
    BatchgridError,
    BrokerUnavailableError,
    ColumnNotFoundError,
    InputError,
    JobNotFoundError,
    JobStateError,
    StorageUnavailableError,
)
from batchgrid.jobs import JobStore
from batchgrid.metrics import observe_job_end, producer_registry
from batchgrid.producer import Producer
from batchgrid.schemas import (
    ImagesRequest,
    JobList,
    JobView,
    QueueBacklog,
    TablesRequest,
    plan_request,
)
from batchgrid.settings import Settings
from batchgrid.storage import confine
from batchgrid.tables import CsvDialect

__all__ = ["create_api"]

logger = logging.getLogger(__name__)

#: Most jobs one page of ``GET /jobs`` lists.
MAX_PAGE = 200
#: Most image outcomes one page of ``GET /jobs/{id}/result`` returns.
MAX_ITEMS_PAGE = 10_000


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``max_bytes`` with 413."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if (
            declared is not None
            and declared.isdigit()
            and int(declared) > self.max_bytes
        ):
            await self._refuse(send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"request body over {self.max_bytes} bytes"},
            status_code=status.HTTP_413_CONTENT_TOO_LARGE,
        )
        await response({"type": "http"}, _no_receive, send)


class _TooLarge(Exception):
    pass


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def _field_error(field: str, error: BatchgridError, code: int = 400) -> HTTPException:
    """A 4xx in FastAPI's validation shape, naming the request field at fault."""
    return HTTPException(
        status_code=code,
        detail=[{"loc": ["body", field], "msg": str(error), "type": "invalid_input"}],
    )


#: The HTTP status of each deliberate error.
_ERROR_STATUS: dict[type[BatchgridError], int] = {
    JobNotFoundError: 404,
    JobStateError: 409,
    AuthError: 401,
    BrokerUnavailableError: 503,
    StorageUnavailableError: 503,
    BatchgridError: 400,
}


def _error_answer(status: int) -> Callable[[Request, Exception], Awaitable[Response]]:
    """An exception handler answering ``status`` with the error's message."""

    async def answer(request: Request, exc: Exception) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=status)

    return answer


def create_api(settings: Settings) -> FastAPI:
    """The API bound to the settings' broker and job store."""
    bearer = HTTPBearer(auto_error=False)
    token = settings.api_token.get_secret_value() if settings.api_token else None

    def authorized(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    ) -> None:
        if token is None:
            return
        given = credentials.credentials if credentials else ""
        if not secrets.compare_digest(given.encode(), token.encode()):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing or wrong bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )

    @asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        store = JobStore.from_settings(settings)
        api.state.store = store
        api.state.producer = Producer(settings, create_app(settings), store)
        api.state.metrics = producer_registry(settings, store)
        api.state.broker = broker_client(settings)
        yield
        store.close()
        if api.state.broker is not None:
            api.state.broker.close()

    # With a token, the OpenAPI document needs it too (below), and the
    # browser pages, which cannot send it, are off.
    public_docs = token is None
    api = FastAPI(
        title="batchgrid",
        version=__version__,
        summary="Distributed image conversion and CSV aggregation on Celery.",
        lifespan=lifespan,
        openapi_url="/openapi.json" if public_docs else None,
        docs_url="/docs" if public_docs else None,
        redoc_url="/redoc" if public_docs else None,
    )
    api.add_middleware(BodyLimit, max_bytes=settings.api_max_body_bytes)
    secured = [Depends(authorized)]

    if not public_docs:

        @api.get("/openapi.json", include_in_schema=False, dependencies=secured)
        def openapi_document() -> dict[str, Any]:
            return api.openapi()

    def store_of(request: Request) -> JobStore:
        store: JobStore = request.app.state.store
        return store

    Store = Annotated[JobStore, Depends(store_of)]

    # Each deliberate error says its cause and fix; any not listed is a 400, never
    # a 500 (Starlette picks the handler of the nearest class).
    for error, code in _ERROR_STATUS.items():
        api.add_exception_handler(error, _error_answer(code))

    @api.exception_handler(RedisError)
    async def _store_away(request: Request, exc: RedisError) -> JSONResponse:
        # The job store went away mid-request (a restart): 503, so clients retry.
        logger.warning("job store unreachable: %s", exc)
        detail = (
            f"the job store does not answer ({exc}); try again shortly, or check "
            "that Redis is up and BATCHGRID_RESULT_BACKEND_URL points at it"
        )
        return JSONResponse({"detail": detail}, status_code=503)

    def submit(request: Request, job: ImagesRequest | TablesRequest) -> Response:
        field = "csv" if isinstance(job, TablesRequest) else "sources"
        if isinstance(job, ImagesRequest):
            try:
                confine(job.destination, settings.storage_roots)
            except InputError as exc:
                raise _field_error("destination", exc) from exc
        if isinstance(job, TablesRequest):
            # Each option checked alone, so that the error names the right field.
            for name, dialect in (
                ("delimiter", {"delimiter": job.delimiter}),
                ("encoding", {"encoding": job.encoding}),
            ):
                try:
                    CsvDialect(**dialect)
                except InputError as exc:
                    raise _field_error(name, exc) from exc
        try:
            plan = plan_request(settings, job)
        except ColumnNotFoundError as exc:
            by = isinstance(job, TablesRequest) and set(exc.missing) & set(job.by)
            raise _field_error("by" if by else "values", exc, 422) from exc
        except StorageUnavailableError:
            raise  # a 503: worth a retry
        except BatchgridError as exc:  # bad input, or a scheme not installed here
            raise _field_error(field, exc) from exc
        producer: Producer = request.app.state.producer
        job_id = producer.submit(plan, origin="api")
        view = JobView.of(producer.store.get(job_id))
        return JSONResponse(
            view.model_dump(mode="json"),
            status_code=status.HTTP_201_CREATED,
            headers={"Location": f"/jobs/{job_id}"},
        )

    created: dict[int | str, dict[str, Any]] = {
        status.HTTP_201_CREATED: {
            "model": JobView,
            "description": "The job was queued.",
        },
        400: {"description": "A path or option is unusable; `detail` names the field."},
        422: {"description": "The request does not match the schema."},
    }

    @api.post("/jobs/images", status_code=201, responses=created, dependencies=secured)
    def submit_images(request: Request, job: ImagesRequest) -> Response:
        """Queue an images job."""
        return submit(request, job)

    @api.post("/jobs/tables", status_code=201, responses=created, dependencies=secured)
    def submit_table(request: Request, job: TablesRequest) -> Response:
        """Queue a tables job."""
        return submit(request, job)

    @api.get("/jobs", dependencies=secured)
    def list_jobs(
        store: Store,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
    ) -> JobList:
        """Recent jobs, newest first."""
        views = []
        for job_id in store.recent(limit=limit, offset=offset):
            try:
                views.append(JobView.of(store.get(job_id)))
            except JobNotFoundError:
                continue  # expired between the two reads
        return JobList(jobs=views, offset=offset, limit=limit)

    job_id_path = Annotated[
        str, PathParam(min_length=1, max_length=64, pattern=r"^[0-9a-f]+$")
    ]

    @api.get("/jobs/{job_id}", dependencies=secured, responses={404: {}})
    def get_job(job_id: job_id_path, store: Store) -> JobView:
        """A job's state, progress and timings."""
        return JobView.of(store.get(job_id))

    @api.get(
        "/jobs/{job_id}/result", dependencies=secured, responses={404: {}, 409: {}}
    )
    def get_result(
        job_id: job_id_path,
        store: Store,
        offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_ITEMS_PAGE)] = 1000,
    ) -> dict[str, Any]:
        """The per-image outcomes (paged) or the per-group table."""
        record = store.get(job_id)
        body: dict[str, Any] = {"job": JobView.of(record).model_dump(mode="json")}
        if record.kind == "images":
            items = sorted(store.items(job_id).items())
            body["items"] = dict(items[offset : offset + limit])
            body["offset"], body["limit"] = offset, limit
            body["result"] = store.result(job_id)
            return body
        if not record.finished:
            raise HTTPException(
                409, f"job {job_id} is {record.state}; poll GET /jobs/{job_id}"
            )
        body["result"] = store.result(job_id)
        return body

    @api.delete("/jobs/{job_id}", dependencies=secured, responses={404: {}, 409: {}})
    def cancel_job(job_id: job_id_path, store: Store, request: Request) -> JobView:
        """Cancel a job: queued tasks are revoked, running ones finish."""
        producer: Producer = request.app.state.producer
        if not producer.cancel(job_id):
            record = store.get(job_id)
            raise HTTPException(409, f"job {job_id} already {record.state}")
        # Observed here, in a process that serves /metrics for long: no worker
        # sees a cancel, and a CLI process would exit before any scrape.
        observe_job_end(store, job_id)
        return JobView.of(store.get(job_id))

    @api.get("/healthz", include_in_schema=True)
    async def healthz() -> dict[str, str]:
        """The process is alive (answered on the event loop: no wait for a thread
        that long planning requests hold)."""
        return {"status": "ok"}

    @api.get("/readyz", responses={503: {}})
    def readyz(store: Store, request: Request) -> dict[str, str]:
        """The broker and the job store answer."""
        store.ping()
        producer: Producer = request.app.state.producer
        try:
            with producer.app.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, timeout=2)
        except Exception as exc:  # kombu raises many types for an unreachable broker
            raise BrokerUnavailableError(f"the broker does not answer ({exc})") from exc
        return {"status": "ready"}

    queues = [settings.images_queue, settings.tables_queue]

    def backlogs(request: Request, names: list[str]) -> list[QueueBacklog]:
        broker = request.app.state.broker
        if broker is None:
            # TODO(AMQP brokers): RabbitMQ's management API has ready + unacked.
            raise HTTPException(
                501,
                "queue backlogs are read from a Redis broker; with RabbitMQ, scale "
                "on its queue depth (ready plus unacknowledged messages)",
            )
        try:
            found = read_backlog(broker, names)
        except RedisError as exc:
            raise BrokerUnavailableError(f"the broker does not answer ({exc})") from exc
        return [QueueBacklog.of(found[name]) for name in names]

    @api.get("/queues", dependencies=secured, responses={501: {}, 503: {}})
    def list_queues(request: Request) -> list[QueueBacklog]:
        """Every queue's backlog: waiting plus in-flight messages."""
        return backlogs(request, queues)

    @api.get(
        "/queues/{queue}", dependencies=secured, responses={404: {}, 501: {}, 503: {}}
    )
    def get_queue(
        request: Request, queue: Annotated[str, PathParam(max_length=256)]
    ) -> QueueBacklog:
        """One queue's backlog: the autoscaling signal (KEDA metrics-api trigger)."""
        if queue not in queues:
            raise HTTPException(404, f"no queue {queue!r}; the queues are {queues}")
        return backlogs(request, [queue])[0]

    @api.get("/metrics", dependencies=secured, response_class=Response)
    def metrics(request: Request) -> Response:
        """Prometheus metrics of this process."""
        body = generate_latest(request.app.state.metrics)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return api
