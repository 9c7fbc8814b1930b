"""Celery tasks: the worker side of both jobs.

Tasks carry only small arguments (paths, byte ranges, options); pixels and rows
are read from shared storage. Every task records its outcomes idempotently in
the job store, so a redelivered task changes nothing.
"""

import logging
import time
from functools import cache
from typing import Any

import redis
from celery import Task, current_app, shared_task
from celery.exceptions import SoftTimeLimitExceeded

from batchgrid import imaging, tables
from batchgrid.errors import InputError
from batchgrid.jobs import JobStore
from batchgrid.settings import get_settings
from batchgrid.storage import confine, filesystem, read_range, write_atomic

__all__ = [
    "aggregate_range",
    "convert_images",
    "fail_job",
    "finish_images",
    "finish_table",
    "submit_scheduled",
]

logger = logging.getLogger(__name__)

#: Errors worth a retry: storage or job store briefly unreachable. Bad input is not.
RETRYABLE = (ConnectionError, TimeoutError, redis.ConnectionError, redis.TimeoutError)
#: How long a merge waits for partials that a redelivered task has yet to record.
MERGE_WAIT_S = 120


@cache
def job_store() -> JobStore:
    """This process's job store client (created lazily, after the pool forks)."""
    settings = get_settings()
    assert settings.job_store_url is not None
    return JobStore(settings.job_store_url, ttl_s=settings.job_ttl_s)


def _attempts(task: Task[Any, Any], job_id: str) -> int:
    """Count deliveries of this task; a poison input shows up as many."""
    return job_store().count_attempt(job_id, task.request.id or "unknown")


def _too_many_deliveries(task: Task[Any, Any], job_id: str) -> bool:
    limit = get_settings().max_retries + 1
    attempts = _attempts(task, job_id)
    if attempts > limit:
        logger.error(
            "delivered %d times (limit %d): the input keeps killing its worker",
            attempts,
            limit,
        )
        return True
    return False


def _convert_one(
    src_url: str, dst_url: str, name: str, options: imaging.ImageOptions
) -> dict[str, Any]:
    fs, path = filesystem(src_url)
    with fs.open(path, "rb") as handle:
        converted = imaging.convert_to_grayscale(handle, name=name, options=options)
    write_atomic(dst_url, converted.data)
    outcome: dict[str, Any] = {
        "output": imaging.output_name(name),
        "width": converted.width,
        "height": converted.height,
    }
    if converted.note:
        outcome["note"] = converted.note
    return outcome


def _error(reason: str, message: str) -> dict[str, Any]:
    return {"error": reason, "message": message}


@shared_task(
    name="batchgrid.images.convert",
    bind=True,
    autoretry_for=RETRYABLE,
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=get_settings().max_retries,
)
def convert_images(
    self: Task[Any, Any],
    *,
    job_id: str,
    src_base: str,
    dst_base: str,
    names: list[str],
    options: dict[str, Any],
) -> dict[str, int]:
    """Convert a batch of images to grayscale; one bad file fails only itself."""
    store = job_store()
    if store.state(job_id) == "cancelled":
        return {"ok": 0, "failed": 0}
    if _too_many_deliveries(self, job_id):
        reason = "the file crashed its worker process on every attempt"
        store.record(job_id, {name: _error("worker_lost", reason) for name in names})
        return {"ok": 0, "failed": len(names)}

    settings = get_settings()
    opts = imaging.ImageOptions(
        max_pixels=int(options.get("max_pixels", settings.max_image_pixels)),
        jpeg_quality=int(options.get("jpeg_quality", settings.jpeg_quality)),
    )
    roots = settings.storage_roots
    outcomes: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for position, name in enumerate(names):
        try:
            src = confine(f"{src_base}/{name}", roots)
            dst = confine(f"{dst_base}/{imaging.output_name(name)}", roots)
            outcomes[name] = _convert_one(src, dst, name, opts)
        except SoftTimeLimitExceeded:
            message = "the task's soft time limit passed before this file's turn"
            for rest in names[position:]:
                outcomes[rest] = _error("time_limit", message)
            break
        except imaging.ImageError as exc:
            outcomes[name] = _error(exc.reason, str(exc))
        except InputError as exc:
            outcomes[name] = _error("input", str(exc))
        except (OSError, MemoryError) as exc:
            outcomes[name] = _error("unreadable", f"{name}: {exc}")
        if "error" in outcomes[name]:
            logger.warning("skipped %s: %s", name, outcomes[name]["message"])

    for outcome in outcomes.values():
        outcome["worker"] = self.request.hostname or ""
    store.record(job_id, outcomes)
    failed = sum("error" in outcome for outcome in outcomes.values())
    logger.info(
        "converted %d/%d images in %.3f s",
        len(names) - failed,
        len(names),
        time.perf_counter() - started,
    )
    return {"ok": len(names) - failed, "failed": failed}


@shared_task(name="batchgrid.images.finish")
def finish_images(results: list[dict[str, int]], *, job_id: str) -> None:
    """Chord callback: mark the images job done with its totals."""
    store = job_store()
    record = store.get(job_id)
    summary = {"ok": record.done - record.failed, "failed": record.failed}
    if store.finish(job_id, "succeeded", result=summary):
        logger.info("job done: %d ok, %d failed", summary["ok"], summary["failed"])


@shared_task(
    name="batchgrid.tables.aggregate_range",
    bind=True,
    autoretry_for=(*RETRYABLE, OSError),
    dont_autoretry_for=(InputError,),
    retry_backoff=True,
    retry_backoff_max=60,
    max_retries=get_settings().max_retries,
)
def aggregate_range(
    self: Task[Any, Any],
    *,
    job_id: str,
    url: str,
    index: int,
    start: int,
    end: int,
    quoted: bool,
) -> dict[str, int]:
    """Aggregate one byte range of a CSV and record the partial under its index."""
    store = job_store()
    if store.state(job_id) == "cancelled":
        return {"index": index, "rows": 0}
    if _too_many_deliveries(self, job_id):
        raise InputError(
            f"{url} bytes {start}-{end}: this range crashed its worker process on "
            "every attempt; check the rows there"
        )

    started = time.perf_counter()
    spec = store.get(job_id).options["spec"]
    data = read_range(confine(url, get_settings().storage_roots), start, end)
    partial = tables.aggregate_range(
        data,
        names=spec["names"],
        by=spec["by"],
        values=spec["values"],
        dialect=tables.CsvDialect(**spec["dialect"]),
        quoted=quoted,
    )
    partial["worker"] = self.request.hostname or ""
    store.record(job_id, {str(index): partial})
    logger.info(
        "range %d (%d bytes, %d rows) in %.3f s",
        index,
        end - start,
        partial["rows"],
        time.perf_counter() - started,
    )
    return {"index": index, "rows": int(partial["rows"])}


@shared_task(name="batchgrid.tables.finish", bind=True, max_retries=MERGE_WAIT_S)
def finish_table(
    self: Task[Any, Any], results: list[dict[str, int]], *, job_id: str
) -> None:
    """Chord callback: merge the partials recorded for every range, once each."""
    store = job_store()
    record = store.get(job_id)
    partials = store.items(job_id)
    if len(partials) < record.total:
        # A redelivered range may still be on its way; wait for it, not for the chord.
        raise self.retry(countdown=1)
    spec = record.options["spec"]
    merged = tables.merge_partials(
        (partials[str(index)] for index in range(record.total)),
        by=spec["by"],
        values=spec["values"],
    )
    if store.finish(job_id, "succeeded", result=merged):
        logger.info(
            "merged %d ranges into %d groups", record.total, len(merged["groups"])
        )


@shared_task(name="batchgrid.jobs.fail")
def fail_job(request: Any, exc: BaseException, traceback: Any, job_id: str) -> None:
    """Chord error callback: the job fails with the reason of the task that failed."""
    reason = str(exc) or type(exc).__name__
    if job_store().finish(job_id, "failed", error=reason):
        logger.error("job failed: %s", reason)


@shared_task(name="batchgrid.jobs.submit_scheduled")
def submit_scheduled(*, name: str, kind: str, params: dict[str, Any]) -> str:
    """Beat's task: plan and submit one periodic job from its stored request."""
    from batchgrid.producer import Producer
    from batchgrid.schemas import ImagesRequest, TablesRequest, plan_request

    settings = get_settings()
    model = ImagesRequest if kind == "images" else TablesRequest
    plan = plan_request(settings, model.model_validate(params))
    job_id = Producer(settings, current_app, job_store()).submit(
        plan, origin=f"schedule:{name}"
    )
    logger.info("scheduled job %s submitted as %s", name, job_id)
    return job_id
