"""Celery tasks: the worker side of both jobs.

Tasks carry only small arguments (paths, byte ranges, options); pixels and rows
are read from shared storage. Every task records its outcomes idempotently in
the job store, so a redelivered task changes nothing.
"""

import logging
import posixpath
import re
import time
from collections import Counter
from functools import cache
from typing import Any

import redis
from celery import Task, current_app, shared_task
from celery.exceptions import SoftTimeLimitExceeded

from batchgrid import imaging, metrics, tables
from batchgrid.celery_app import TASK_NAMES
from batchgrid.errors import BatchgridError, InputError, JobNotFoundError
from batchgrid.jobs import JobStore
from batchgrid.settings import get_settings
from batchgrid.storage import (
    confine,
    filesystem,
    read_range,
    remove_orphans,
    write_atomic,
)

__all__ = [
    "aggregate_range",
    "convert_images",
    "fail_job",
    "finish_images",
    "finish_table",
    "send_finish",
    "submit_scheduled",
]

logger = logging.getLogger(__name__)

#: Errors worth a retry: storage or job store briefly unreachable. Bad input is not.
RETRYABLE = (ConnectionError, TimeoutError, redis.ConnectionError, redis.TimeoutError)
#: How often a merge looks again for partials a redelivered task has yet to
#: record, and how long it keeps looking before the job fails.
MERGE_RETRY_COUNTDOWN_S = 1
MERGE_WAIT_S = 120
#: How long a task's job store calls keep retrying while Redis is away.
STORE_OUTAGE_S = 20.0
#: Shared by the tasks that read storage: retry transient errors with backoff.
_RETRY_OPTIONS: dict[str, Any] = {
    "bind": True,
    "retry_backoff": True,
    "retry_backoff_max": 60,
    "max_retries": get_settings().max_retries,
}


@cache
def job_store() -> JobStore:
    """This process's job store client (created lazily, after the pool forks).

    Its calls wait out a Redis restart of up to STORE_OUTAGE_S instead of
    failing the task (whose retry could not be sent to a broker that is down).
    """
    return JobStore.from_settings(get_settings(), outage_s=STORE_OUTAGE_S)


def _attempts(task: Task[Any, Any], job_id: str) -> int:
    """Count deliveries of this try of the task; a poison input shows up as many."""
    request = task.request
    return job_store().count_attempt(
        job_id, request.id or "unknown", int(request.retries or 0)
    )


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
    try:
        write_atomic(dst_url, converted.data)
    except RETRYABLE:
        raise
    except OSError as exc:  # the output's fault, not the input's
        raise imaging.ImageError(
            "unwritable",
            f"{name}: the output {dst_url} could not be written ({exc}); check the "
            "destination's free space and permissions",
        ) from exc
    outcome: dict[str, Any] = {
        "output": imaging.output_name(name),
        "width": converted.width,
        "height": converted.height,
    }
    if converted.note:
        outcome["note"] = converted.note
    return outcome


def _remove_orphans(dst_base: str, names: list[str], roots: list[str]) -> None:
    """Delivered again after a crash: remove the temporary files the dead process
    left where this batch writes."""
    outputs = (f"{dst_base}/{imaging.output_name(name)}" for name in names)
    removed = 0
    for folder in {posixpath.dirname(output) for output in outputs}:
        try:
            removed += remove_orphans(confine(folder, roots))
        except (BatchgridError, OSError) as exc:
            logger.warning("could not look for temporary files in %s: %s", folder, exc)
    if removed:
        logger.warning("removed %d temporary files left by a dead process", removed)


def _send_finish(task: Task[Any, Any], job_id: str, kind: str) -> None:
    """Every item has its outcome: send the job's callback from here as well.

    The chord sends it when it has counted every task's result, but a process
    killed between storing its result and counting it leaves the count one
    short for good. The callback finishes the job once, whoever sends it.
    """
    queue = (task.request.delivery_info or {}).get("routing_key") or None
    send_finish(task.app, job_id, kind, queue=queue)


def _error(reason: str, message: str) -> dict[str, Any]:
    return {"error": reason, "message": message}


@shared_task(name="batchgrid.images.convert", autoretry_for=RETRYABLE, **_RETRY_OPTIONS)
def convert_images(
    self: Task[Any, Any],
    *,
    job_id: str,
    src_base: str,
    dst_base: str,
    names: list[str],
    options: dict[str, Any],
) -> dict[str, Any]:
    """Convert a batch of images to grayscale; one bad file fails only itself.

    A batch delivered again after its process died goes file by file, recording
    each outcome at once: a file that kills its process on every try is failed
    alone (``worker_lost``) after ``max_retries`` + 1 tries.
    """
    store = job_store()
    if store.state(job_id) == "cancelled":
        return {"ok": 0, "failed": 0}
    settings = get_settings()
    limit = settings.max_retries + 1
    attempts = _attempts(self, job_id)
    opts = imaging.ImageOptions(
        max_pixels=int(options.get("max_pixels", settings.max_image_pixels)),
        jpeg_quality=int(options.get("jpeg_quality", settings.jpeg_quality)),
        max_bytes=settings.max_image_bytes,
    )
    roots = settings.storage_roots
    todo = names
    again = attempts > 1
    if again:
        _remove_orphans(dst_base, names, roots)
        done = store.recorded(job_id, names)
        todo = [name for name in names if name not in done]
    outcomes: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for position, name in enumerate(todo):
        if again and (
            attempts > limit * (len(names) + 1)  # not any one file's fault
            or store.count_attempt(job_id, f"{self.request.id}:{name}", 0) >= limit
        ):
            outcomes[name] = _error(
                "worker_lost",
                f"{name}: its worker process died or passed the hard time limit "
                f"on each of {limit} tries (out of memory, a crash or a stall in "
                "a decoder); check the file",
            )
            logger.error("failed %s: %s", name, outcomes[name]["message"])
        else:
            try:
                src = confine(f"{src_base}/{name}", roots)
                dst = confine(f"{dst_base}/{imaging.output_name(name)}", roots)
                outcomes[name] = _convert_one(src, dst, name, opts)
            except SoftTimeLimitExceeded:
                message = "the task's soft time limit passed before this file's turn"
                for rest in todo[position:]:
                    outcomes[rest] = _error("time_limit", message)
                break
            except imaging.ImageError as exc:
                outcomes[name] = _error(exc.reason, str(exc))
            except RETRYABLE:
                raise  # storage briefly away: retry the batch, outcomes are idempotent
            except InputError as exc:
                outcomes[name] = _error("input", str(exc))
            except MemoryError:
                outcomes[name] = _error(
                    "out_of_memory",
                    f"{name}: converting it needs more memory than "
                    "BATCHGRID_MAX_TASK_MEMORY_BYTES allows; downscale the image",
                )
            except OSError as exc:
                outcomes[name] = _error("unreadable", f"{name}: {exc}")
            if "error" in outcomes[name]:
                logger.warning("skipped %s: %s", name, outcomes[name]["message"])
        if again:  # recorded at once, so that the next crash spares this file
            outcomes[name]["worker"] = self.request.hostname or ""
            store.record(job_id, {name: outcomes[name]})

    for outcome in outcomes.values():
        outcome["worker"] = self.request.hostname or ""
    if store.record(job_id, outcomes):
        _send_finish(self, job_id, "images")
    failed = sum("error" in outcome for outcome in outcomes.values())
    logger.info(
        "converted %d/%d images in %.3f s",
        len(outcomes) - failed,
        len(outcomes),
        time.perf_counter() - started,
    )
    reasons = [o["error"] for o in outcomes.values() if "error" in o]  # for metrics
    return {"ok": len(outcomes) - failed, "failed": failed, "errors": Counter(reasons)}


def _wait_for_items(task: Task[Any, Any], store: JobStore, job_id: str) -> bool:
    """In a chord callback: False if the job has ended already; retry until every
    item has its outcome (a redelivered task may still be on its way)."""
    record = store.get(job_id)
    if record.finished:
        return False
    if record.done < record.total:
        if task.request.retries >= MERGE_WAIT_S // MERGE_RETRY_COUNTDOWN_S:
            raise InputError(
                f"only {record.done} of {record.total} items were recorded "
                f"{MERGE_WAIT_S} s after the last task ended; resubmit the job"
            )
        raise task.retry(countdown=MERGE_RETRY_COUNTDOWN_S)
    return True


@shared_task(name="batchgrid.images.finish", bind=True, max_retries=None)
def finish_images(
    self: Task[Any, Any], results: list[dict[str, int]], *, job_id: str
) -> None:
    """Chord callback: mark the images job done with its totals."""
    store = job_store()
    if not _wait_for_items(self, store, job_id):
        return
    record = store.get(job_id)
    summary = {"ok": record.done - record.failed, "failed": record.failed}
    if store.finish(job_id, "succeeded", result=summary):
        logger.info("job done: %d ok, %d failed", summary["ok"], summary["failed"])


@shared_task(
    name="batchgrid.tables.aggregate_range",
    autoretry_for=(*RETRYABLE, OSError),
    dont_autoretry_for=(InputError,),
    **_RETRY_OPTIONS,
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
            f"{url} bytes {start}-{end}: this range crashed its worker process or "
            "passed the hard time limit on every attempt; check the rows there, or "
            "use a smaller --chunk-bytes"
        )

    started = time.perf_counter()
    spec = store.get(job_id).options["spec"]
    try:
        data = read_range(confine(url, get_settings().storage_roots), start, end)
    except OSError as exc:
        retries = int(self.request.retries or 0)
        if retries < (self.max_retries or 0):
            raise  # retried with backoff
        raise InputError(
            f"{url} bytes {start}-{end}: unreadable after {retries} retries ({exc}); "
            "check that the file is still there and readable"
        ) from exc
    try:
        partial = tables.aggregate_range(
            data,
            names=spec["names"],
            by=spec["by"],
            values=spec["values"],
            dialect=tables.CsvDialect(**spec["dialect"]),
            quoted=quoted,
            max_field_bytes=get_settings().max_csv_field_bytes,
        )
    except MemoryError as exc:
        raise InputError(
            f"{url} bytes {start}-{end}: parsing the range needs more memory than "
            "BATCHGRID_MAX_TASK_MEMORY_BYTES allows; use a smaller --chunk-bytes"
        ) from exc
    except (InputError, ValueError) as exc:  # pyarrow's errors are ValueErrors
        raise InputError(f"{url} bytes {start}-{end}: {exc}") from exc
    partial["worker"] = self.request.hostname or ""
    if store.record(job_id, {str(index): partial}):
        _send_finish(self, job_id, "tables")
    logger.info(
        "range %d (%d bytes, %d rows) in %.3f s",
        index,
        end - start,
        partial["rows"],
        time.perf_counter() - started,
    )
    return {
        "index": index,
        "rows": int(partial["rows"]),
        "bytes": end - start,
        "malformed_rows": int(partial["malformed_rows"]),
    }


@shared_task(name="batchgrid.tables.finish", bind=True, max_retries=None)
def finish_table(
    self: Task[Any, Any], results: list[dict[str, int]], *, job_id: str
) -> None:
    """Chord callback: merge the partials recorded for every range, once each."""
    store = job_store()
    if not _wait_for_items(self, store, job_id):
        return
    record = store.get(job_id)
    partials = store.items(job_id)
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


def _reason(exc: BaseException) -> str:
    """The failing task's own message, without Celery's chord wrapping."""
    text = str(exc) or type(exc).__name__
    # ChordError reads "Dependency <task id> raised InputError('<message>')".
    wrapped = re.fullmatch(r"Dependency \S+ raised \w+\((['\"])(.*)\1,?\)", text, re.S)
    return wrapped.group(2).replace("\\'", "'") if wrapped else text


#: Failures that are no verdict on the input: a broker or job store outage, or a
#: task stopped by the hard time limit (a decoder stuck in C code, or a pool
#: process that died unseen). The reconciler sends such a task again, and the
#: delivery counts then fail alone the file or range that keeps causing it.
_RETRIED = re.compile(
    r"\b(ConnectionError|TimeoutError|ConnectionRefusedError|TimeLimitExceeded)\b"
)


def send_finish(app: Any, job_id: str, kind: str, *, queue: str | None = None) -> None:
    """Send a job's closing callback, which ends it from its recorded outcomes once;
    on ``queue``, else the queue of the job's kind."""
    if queue is None:
        settings = get_settings()
        queue = settings.images_queue if kind == "images" else settings.tables_queue
    finish = TASK_NAMES["finish_images" if kind == "images" else "finish_table"]
    fail = app.signature(TASK_NAMES["fail_job"], args=(job_id,), queue=queue)
    app.signature(
        finish, args=([],), kwargs={"job_id": job_id}, queue=queue
    ).apply_async(link_error=fail)


@shared_task(name="batchgrid.jobs.fail")
def fail_job(request: Any, exc: BaseException, traceback: Any, job_id: str) -> None:
    """Chord error callback: the job fails with the reason of the task that failed.

    Unless the work is not at fault: when every item has its outcome the job is
    ended from them, and a task that failed on a broker or job store outage, or
    was stopped by the hard time limit, is left for the reconciler to send again
    (batchgrid.reconcile).
    """
    store = job_store()
    try:
        record = store.get(job_id)
    except JobNotFoundError:
        return  # expired: nothing left to fail
    if record.finished:
        return
    reason = _reason(exc)
    if record.done >= record.total:
        logger.warning("job %s: every item done despite %s; ending it", job_id, reason)
        send_finish(current_app, job_id, record.kind)
        return
    if _RETRIED.search(reason):
        logger.warning(
            "job %s: a task failed on an outage or the hard time limit (%s); it is "
            "sent again",
            job_id,
            reason,
        )
        return
    if store.finish(job_id, "failed", error=reason):
        logger.error("job %s failed: %s", job_id, reason)
        metrics.observe_job_end(store, job_id)


@shared_task(name="batchgrid.jobs.submit_scheduled")
def submit_scheduled(*, name: str, kind: str, params: dict[str, Any]) -> str:
    """Beat's task: plan and submit one periodic job from its stored request."""
    from batchgrid.producer import Producer
    from batchgrid.schemas import ImagesRequest, TablesRequest, plan_request

    settings = get_settings()
    task_id = submit_scheduled.request.id
    if task_id and not job_store().claim(f"scheduled:{task_id}"):
        logger.warning(
            "scheduled run %s was delivered again; not submitting twice", name
        )
        return ""
    model = ImagesRequest if kind == "images" else TablesRequest
    plan = plan_request(settings, model.model_validate(params))
    job_id = Producer(settings, current_app, job_store()).submit(
        plan, origin=f"schedule:{name}"
    )
    logger.info("scheduled job %s submitted as %s", name, job_id)
    return job_id
