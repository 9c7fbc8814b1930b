"""Plan jobs and hand them to the workers: the producer side of both jobs.

Planning reads only what it must (image file sizes, the CSV's header and quote
positions); tasks carry paths and byte ranges, never pixels or rows.
"""

import logging
import posixpath
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from celery import Celery, chord, group
from celery.canvas import Signature
from celery.utils import uuid

from batchgrid import imaging, metrics, tables
from batchgrid.celery_app import TASK_NAMES
from batchgrid.errors import BrokerUnavailableError, InputError, PathOutsideRootsError
from batchgrid.jobs import JobStore
from batchgrid.settings import Settings
from batchgrid.storage import confine, filesystem

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageBatch",
    "ImagesPlan",
    "Producer",
    "TablePlan",
    "batch_images",
    "list_images",
    "plan_images",
    "plan_table",
]

logger = logging.getLogger(__name__)

#: File name endings taken as images when a directory or glob is listed.
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".gif", ".webp", ".tif", ".tiff", ".bmp", ".ppm"}
)
#: Room for the names in one task message. The broker stores the body in base64
#: (4/3 larger) beside the chord callback, and a message must stay under 4 KB.
BATCH_NAME_BYTES = 1024


@dataclass(frozen=True)
class ImageBatch:
    """Images converted by one task, named relative to a common base."""

    names: list[str]
    size_bytes: int


#: A table planned into more ranges than this, each under SMALL_RANGE_BYTES, gets
#: a warning: broker work then outweighs parsing (a unit mistake, most likely).
SMALL_RANGES_WARN_TASKS = 1000
#: Ranges under this size cost more in broker work than their parsing.
SMALL_RANGE_BYTES = 1024 * 1024
#: The characters that make a source a glob.
_GLOB_CHARS = "*?["


def _is_glob(url: str) -> bool:
    """Globs have wildcards; a path that exists is taken literally even so."""
    return any(char in url for char in _GLOB_CHARS)


def _glob_folder(pattern: str) -> str:
    """The folder a glob lists: its fixed part up to the last slash (``.`` if none)."""
    fixed = pattern[: min(pattern.index(c) for c in _GLOB_CHARS if c in pattern)]
    return posixpath.dirname(fixed) or "."


def list_images(
    sources: Sequence[str], roots: Sequence[str], *, exclude: str | None = None
) -> tuple[str, list[tuple[str, int]]]:
    """Expand directories, globs and files into ``(base, [(name, size_bytes)])``.

    Directories are walked recursively for image endings; files named
    explicitly are taken whatever their ending (a bad one is reported, not
    skipped). Anything under ``exclude`` (the output folder) is left out.
    """
    found: dict[str, int] = {}
    for source in sources:
        for url, size in _expand(source, roots):
            if exclude is None or not _is_under(url, exclude):
                found[url] = size
    if not found:
        raise InputError(
            f"no images found in {', '.join(sources)}; name a directory, a glob "
            "such as 'photos/*.jpg', or image files"
        )
    paths = sorted(found)
    base = _common_folder(paths)
    return base, [
        (posixpath.relpath(_path_part(p), _path_part(base)), found[p]) for p in paths
    ]


def _expand(source: str, roots: Sequence[str]) -> Iterator[tuple[str, int]]:
    """The image URLs (confined) and sizes that one source names."""
    fs, path = filesystem(confine(source, roots))
    if fs.exists(path):
        if not fs.isdir(path):
            yield confine(_unstrip(source, path), roots), int(fs.info(path)["size"])
            return
        candidates = fs.find(path, detail=True)
    elif _is_glob(source):
        if ".." in source.replace("\\", "/").split("/"):
            raise PathOutsideRootsError(f"{source!r}: '..' is not allowed in a glob")
        # Confine the fixed part first, so nothing outside the roots is listed.
        confine(_glob_folder(source), roots)
        fs, pattern = filesystem(source)
        matches = fs.glob(pattern, detail=True)
        candidates = {p: info for p, info in matches.items() if info["type"] == "file"}
    else:
        raise InputError(f"{source}: no such file or directory; check the path")
    for found, info in candidates.items():
        if posixpath.splitext(found)[1].lower() in IMAGE_SUFFIXES:
            yield confine(_unstrip(source, found), roots), int(info["size"])


def _path_part(url: str) -> str:
    return url.split("://", 1)[1] if "://" in url else url


def _common_folder(urls: Sequence[str]) -> str:
    """The deepest folder holding every URL (URL schemes kept intact)."""
    scheme = urls[0].split("://", 1)[0] + "://" if "://" in urls[0] else ""
    parts = [_path_part(url) for url in urls]
    common = (
        posixpath.dirname(parts[0]) if len(parts) == 1 else posixpath.commonpath(parts)
    )
    if common in parts:  # one file, or a file named like a folder of others
        common = posixpath.dirname(common)
    return scheme + common


def _is_under(url: str, folder: str) -> bool:
    return url == folder or url.startswith(folder.rstrip("/") + "/")


def _unstrip(source: str, path: str) -> str:
    """Put the URL scheme that fsspec strips back on a listed path."""
    if "://" in source and not source.startswith("file://"):
        return source.split("://", 1)[0] + "://" + path.lstrip("/")
    return path


def batch_images(
    items: Sequence[tuple[str, int]], *, batch_bytes: int, max_items: int
) -> Iterator[ImageBatch]:
    """Group images into tasks of about ``batch_bytes``, small messages always."""
    names: list[str] = []
    size = name_bytes = 0
    for name, item_bytes in items:
        encoded = len(name.encode()) + 4
        if names and (
            size + item_bytes > batch_bytes
            or len(names) >= max_items
            or name_bytes + encoded > BATCH_NAME_BYTES
        ):
            yield ImageBatch(names, size)
            names, size, name_bytes = [], 0, 0
        names.append(name)
        size += item_bytes
        name_bytes += encoded
    if names:
        yield ImageBatch(names, size)


def _check_output_names(names: Iterable[str]) -> None:
    """Refuse a job in which two inputs would be written to one output file."""
    seen: dict[str, str] = {}
    for name in names:
        output = imaging.output_name(name)
        if output in seen:
            raise InputError(
                f"{seen[output]} and {name} would both be written as {output}; "
                "rename one of them"
            )
        seen[output] = name


@dataclass(frozen=True)
class ImagesPlan:
    """An images job ready to submit: where from, where to, and the task batches."""

    sources: list[str]
    src_base: str
    dst_base: str
    batches: list[ImageBatch]

    @property
    def total(self) -> int:
        return sum(len(batch.names) for batch in self.batches)


@dataclass(frozen=True)
class TablePlan:
    """A tables job ready to submit: the file, what to compute, and its byte ranges."""

    url: str
    source: str
    size_bytes: int
    chunk_bytes: int
    spec: dict[str, Any]
    ranges: list[tables.ByteRange]


def plan_images(
    settings: Settings, sources: Sequence[str], destination: str
) -> ImagesPlan:
    """List and batch the images of a job; needs storage, not the broker."""
    roots = settings.storage_roots
    dst_base = confine(destination, roots)
    fs, dst_path = filesystem(dst_base)
    if fs.exists(dst_path) and not fs.isdir(dst_path):
        raise InputError(f"{destination}: is a file; the destination must be a folder")
    for source in sources:
        folder = _glob_folder(source) if _is_glob(source) else source
        if _is_under(confine(folder.rstrip("/") or "/", roots), dst_base):
            raise InputError(
                f"{destination}: the output folder holds the input {source}; choose "
                "a folder outside the inputs so originals are never overwritten"
            )
    src_base, items = list_images(sources, roots, exclude=dst_base)
    _check_output_names(name for name, _ in items)
    batches = batch_images(
        items,
        batch_bytes=settings.image_batch_bytes,
        max_items=settings.image_batch_max_items,
    )
    planned = list(batches)
    if len(planned) > settings.max_tasks_per_job:
        raise InputError(
            f"{len(items)} images make {len(planned)} tasks, more than "
            f"BATCHGRID_MAX_TASKS_PER_JOB ({settings.max_tasks_per_job}); "
            "split the job"
        )
    return ImagesPlan(list(sources), src_base, dst_base, planned)


def plan_table(
    settings: Settings,
    url: str,
    *,
    by: Sequence[str],
    values: Sequence[str],
    dialect: tables.CsvDialect | None = None,
    chunk_bytes: int | None = None,
) -> TablePlan:
    """Read the header, check the columns and split the rows into byte ranges."""
    dialect = dialect or tables.CsvDialect()
    chunk_bytes = chunk_bytes or settings.chunk_bytes
    source = confine(url, settings.storage_roots)
    fs, path = filesystem(source)
    if not fs.exists(path):
        raise InputError(f"{url}: no such file; check the path")
    if fs.isdir(path):
        raise InputError(f"{url}: is a folder; give the CSV file inside it")
    size = int(fs.info(path)["size"])
    with fs.open(path, "rb") as handle:
        header = tables.read_header(handle, name=url, dialect=dialect)
        tables.check_columns(
            header, name=url, by=by, values=values, delimiter=dialect.delimiter
        )
        handle.seek(0)
        ranges = tables.plan_ranges(
            handle,
            start=header.end_offset,
            size=size,
            chunk_bytes=chunk_bytes,
            dialect=dialect,
        )
    if len(ranges) > settings.max_tasks_per_job:
        raise InputError(
            f"{url}: {len(ranges)} ranges of {chunk_bytes} bytes is more than "
            f"BATCHGRID_MAX_TASKS_PER_JOB ({settings.max_tasks_per_job}); "
            "use a larger --chunk-bytes"
        )
    if len(ranges) > SMALL_RANGES_WARN_TASKS and chunk_bytes < SMALL_RANGE_BYTES:
        logger.warning(
            "%s: %d ranges of %d bytes each; a task costs milliseconds of broker "
            "work, far more than parsing so few bytes: --chunk-bytes (chunk_bytes "
            "in the API) is in bytes, default %d",
            url,
            len(ranges),
            chunk_bytes,
            type(settings).model_fields["chunk_bytes"].default,
        )
    spec = {
        "names": header.names,
        "by": list(by),
        "values": list(values),
        "dialect": asdict(dialect),
    }
    return TablePlan(url, source, size, chunk_bytes, spec, ranges)


def _items_of(kwargs: Mapping[str, Any]) -> list[str]:
    """The job items a task records outcomes for: its images, or its range."""
    if "names" in kwargs:
        return [str(name) for name in kwargs["names"]]
    return [str(kwargs["index"])]


class Producer:
    """Submits jobs to the broker and records them in the job store."""

    def __init__(self, settings: Settings, app: Celery, store: JobStore) -> None:
        self.settings = settings
        self.app = app
        self.store = store
        metrics.install_publish_hook()  # workers measure queue wait from it

    def _signature(self, task: str, queue: str, **kwargs: Any) -> Signature[Any]:
        # A short repr: Celery otherwise repeats every argument in the headers.
        summary = f"job={kwargs['job_id']}"
        if "index" in kwargs:
            summary += f" range={kwargs['index']}"
        elif "names" in kwargs:
            summary += f" images={len(kwargs['names'])}"
        return self.app.signature(
            TASK_NAMES[task],
            kwargs=kwargs,
            queue=queue,
            argsrepr="()",
            kwargsrepr=summary,
        )

    def submit_images(self, sources: Sequence[str], destination: str) -> str:
        """Plan and submit an images job; returns the job id."""
        return self.submit(plan_images(self.settings, sources, destination))

    def submit_table(
        self,
        url: str,
        *,
        by: Sequence[str],
        values: Sequence[str],
        dialect: tables.CsvDialect | None = None,
        chunk_bytes: int | None = None,
    ) -> str:
        """Plan and submit a tables job; returns the job id."""
        plan = plan_table(
            self.settings,
            url,
            by=by,
            values=values,
            dialect=dialect,
            chunk_bytes=chunk_bytes,
        )
        return self.submit(plan)

    def submit(self, plan: ImagesPlan | TablePlan, *, origin: str = "") -> str:
        """Record a planned job and send its tasks; returns the job id.

        ``origin`` says who asked (``cli``, ``api``, ``schedule:NAME``).
        """
        if isinstance(plan, ImagesPlan):
            job_id = self._submit_images(plan, origin)
        else:
            job_id = self._submit_table(plan, origin)
        kind = "images" if isinstance(plan, ImagesPlan) else "tables"
        metrics.JOBS_SUBMITTED.labels(kind, origin.split(":")[0] or "unknown").inc()
        return job_id

    def cancel(self, job_id: str) -> bool:
        """Cancel a job; False if it had ended already.

        Its tasks still queued are revoked: workers that hear of it drop them
        unrun, and any other skips its work on seeing the job cancelled. Running
        tasks finish.
        """
        if not self.store.cancel(job_id):
            return False
        task_ids = list(self.store.tasks(job_id))
        if task_ids:
            try:
                self.app.control.revoke(task_ids)
            except Exception as exc:  # the mark in the job store is enough
                logger.warning("job %s: revoking its tasks failed: %s", job_id, exc)
        logger.info("job %s cancelled, %d tasks revoked", job_id, len(task_ids))
        return True

    def _submit_images(self, plan: ImagesPlan, origin: str) -> str:
        options = {
            "max_pixels": self.settings.max_image_pixels,
            "jpeg_quality": self.settings.jpeg_quality,
        }
        job_id = self.store.create(
            "images",
            total=plan.total,
            options={
                "origin": origin,
                "sources": plan.sources,
                "destination": plan.dst_base,
                "tasks": len(plan.batches),
            },
        )
        queue = self.settings.images_queue
        header = group(
            self._signature(
                "convert_images",
                queue,
                job_id=job_id,
                src_base=plan.src_base,
                dst_base=plan.dst_base,
                names=batch.names,
                options=options,
            )
            for batch in plan.batches
        )
        body = self._signature("finish_images", queue, job_id=job_id)
        self._launch(header, body, job_id, queue)
        logger.info(
            "job %s: %d images in %d tasks", job_id, plan.total, len(plan.batches)
        )
        return job_id

    def _submit_table(self, plan: TablePlan, origin: str) -> str:
        job_id = self.store.create(
            "tables",
            total=len(plan.ranges),
            options={
                "origin": origin,
                "spec": plan.spec,
                "url": plan.url,
                "by": plan.spec["by"],
                "values": plan.spec["values"],
                "chunk_bytes": plan.chunk_bytes,
                "size_bytes": plan.size_bytes,
            },
        )
        if not plan.ranges:
            merged = tables.merge_partials(
                [], by=plan.spec["by"], values=plan.spec["values"]
            )
            self.store.finish(job_id, "succeeded", result=merged)
            return job_id
        queue = self.settings.tables_queue
        header = group(
            self._signature(
                "aggregate_range",
                queue,
                job_id=job_id,
                url=plan.source,
                index=part.index,
                start=part.start,
                end=part.end,
                quoted=part.quoted,
            )
            for part in plan.ranges
        )
        body = self._signature("finish_table", queue, job_id=job_id)
        self._launch(header, body, job_id, queue)
        logger.info(
            "job %s: %d bytes in %d ranges", job_id, plan.size_bytes, len(plan.ranges)
        )
        return job_id

    def _launch(
        self, header: group, body: Signature[Any], job_id: str, queue: str
    ) -> None:
        # If any header task fails for good, the job fails with its reason.
        body.link_error(
            self.app.signature(TASK_NAMES["fail_job"], args=(job_id,), queue=queue)
        )
        # Ids fixed now and kept with the job, so that a cancel can revoke them
        # and the reconciler can send again what Redis lost.
        tasks: dict[str, dict[str, Any]] = {}
        for task in header.tasks:
            task.set(task_id=task.options.get("task_id") or uuid())
            tasks[str(task.options["task_id"])] = {
                "name": task.task,
                "queue": queue,
                "kwargs": dict(task.kwargs),
                "items": _items_of(task.kwargs),
            }
        self.store.set_tasks(job_id, tasks)
        try:
            chord(header, body).apply_async()
        except (
            Exception
        ) as exc:  # kombu and redis raise many types when the broker is away
            reason = f"the broker refused the job's tasks ({exc}); submit it again"
            self.store.finish(job_id, "failed", error=reason)
            raise BrokerUnavailableError(reason) from exc
        self.store.mark_published(job_id)
