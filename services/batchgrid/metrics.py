"""Prometheus metrics of workers and producers: queue wait, runtime, outcomes, items.

Pool processes write their samples to files (prometheus-client's multiprocess
mode); the worker's main process serves them merged on ``/metrics``, together
with gauges read at scrape time: queue lengths, reserved and active tasks, jobs
in progress. Example::

    BATCHGRID_METRICS_PORT=9809 batchgrid worker
    curl -s localhost:9809/metrics | grep batchgrid_tasks_total

Labels stay bounded: task name, queue, node (``NODE_NAME``, else the host name),
worker (the Celery node name), outcome, job kind, item unit and error reason;
never a job id, a file name or a process id.
"""

import contextlib
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
from celery import Task, signals
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    start_http_server,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from batchgrid.backlog import broker_client, read_backlog
from batchgrid.celery_app import TASK_NAMES
from batchgrid.jobs import JobStore
from batchgrid.settings import Settings
from batchgrid.storage import pid_alive

__all__ = [
    "ITEMS_PROCESSED",
    "ITEM_ERRORS",
    "ITEM_ERROR_REASONS",
    "JOBS_SUBMITTED",
    "JOB_DURATION",
    "MULTIPROC_DIR_ENV",
    "PUBLISHED_AT_HEADER",
    "QUEUE_WAIT",
    "TASKS",
    "TASKS_PUBLISHED",
    "TASK_RUNTIME",
    "BrokerCollector",
    "WorkerCollector",
    "fold_dead_processes",
    "install_publish_hook",
    "install_worker_hooks",
    "node_name",
    "observe_job_end",
    "prepare_multiprocess_dir",
    "producer_registry",
    "serve_worker_metrics",
    "zero_worker_series",
]

logger = logging.getLogger(__name__)

#: Message header carrying the publish time (seconds since the epoch) to the worker.
PUBLISHED_AT_HEADER = "batchgrid_published_at"
#: prometheus-client's multiprocess mode writes its files under this directory.
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Item error reasons kept as label values: an image's error, or a table row too
#: ragged to parse (``malformed_row``); any other reason is counted as "other".
ITEM_ERROR_REASONS = (
    "malformed_row",
    "empty",
    "too_large",
    "unidentified",
    "truncated",
    "too_many_pixels",
    "unreadable",
    "unwritable",
    "time_limit",
    "worker_lost",
    "out_of_memory",
    "input",
    "other",
)
#: Task outcomes, each a value of the ``outcome`` label.
OUTCOMES = ("succeeded", "failed", "retried", "revoked")
#: The scrape counts queued and running jobs among this many most recent ones.
MAX_SCANNED_JOBS = 1000

#: Queue wait spans milliseconds (idle fleet) to hours (a backlog).
QUEUE_WAIT_BUCKETS_S = (
    *(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    *(30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0),
)
#: Tasks are sized for about 0.1-1 s of work, limited by the hard time limit.
RUNTIME_BUCKETS_S = (
    *(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    *(30.0, 60.0, 120.0, 300.0, 600.0),
)
#: Jobs take seconds to hours.
JOB_BUCKETS_S = (
    *(0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0),
    *(1800.0, 3600.0, 7200.0, 21600.0, 86400.0),
)

_TASK_LABELS = ("task", "queue", "node", "worker")

QUEUE_WAIT = Histogram(
    "batchgrid_task_queue_wait_seconds",
    "Time from publish (or ETA) to the start of a task, from the message's header.",
    _TASK_LABELS,
    buckets=QUEUE_WAIT_BUCKETS_S,
)
TASK_RUNTIME = Histogram(
    "batchgrid_task_runtime_seconds",
    "Time a task ran in its pool process.",
    _TASK_LABELS,
    buckets=RUNTIME_BUCKETS_S,
)
TASKS = Counter(
    "batchgrid_tasks",
    "Tasks ended, by outcome: succeeded, failed, retried, revoked.",
    (*_TASK_LABELS, "outcome"),
)
ITEMS_PROCESSED = Counter(
    "batchgrid_items_processed",
    "Items tasks handled, by unit: images (failed ones included), rows, bytes.",
    ("unit", "node", "worker"),
)
ITEM_ERRORS = Counter(
    "batchgrid_item_errors",
    "Items that failed, by reason: images by their error, malformed table rows.",
    ("reason", "node", "worker"),
)
JOB_DURATION = Histogram(
    "batchgrid_job_duration_seconds",
    "Jobs from submission to their end, by kind and final state.",
    ("kind", "state"),
    buckets=JOB_BUCKETS_S,
)
JOBS_SUBMITTED = Counter(
    "batchgrid_jobs_submitted",
    "Jobs this process submitted, by kind and origin (cli, api, schedule...).",
    ("kind", "origin"),
)
TASKS_PUBLISHED = Counter(
    "batchgrid_tasks_published",
    "Task messages this process published.",
    ("task", "queue"),
)


def node_name() -> str:
    """The node label: ``NODE_NAME`` (the Kubernetes node), else the host name."""
    return os.environ.get("NODE_NAME") or socket.gethostname()


# --- Publishing ------------------------------------------------------------------


def _stamp_published_at(
    sender: str | None = None,
    headers: dict[str, Any] | None = None,
    routing_key: str | None = None,
    **_: Any,
) -> None:
    if headers is not None:
        headers[PUBLISHED_AT_HEADER] = time.time()
    TASKS_PUBLISHED.labels(task=str(sender), queue=routing_key or "unknown").inc()


def install_publish_hook() -> None:
    """Stamp every task message this process publishes with its publish time."""
    signals.before_task_publish.connect(
        _stamp_published_at, weak=False, dispatch_uid="batchgrid.metrics.publish"
    )


# --- Worker: pool processes --------------------------------------------------------


class _TaskClock:
    """Per pool process: when each running task started, and its labels."""

    def __init__(self) -> None:
        self.started: dict[str, tuple[float, tuple[str, str, str, str]]] = {}
        self.initialised: set[tuple[str, ...]] = set()
        self.store: Callable[[], JobStore] | None = None
        #: This worker's node name, for outcomes seen in the main process.
        self.worker = "unknown"


_clock = _TaskClock()


def _labels_of(task_name: str, request: Any) -> tuple[str, str, str, str]:
    delivery = getattr(request, "delivery_info", None) or {}
    queue = delivery.get("routing_key") or "unknown"
    worker = getattr(request, "hostname", None) or _clock.worker
    return task_name, str(queue), node_name(), str(worker)


def _ready_at(request: Any) -> float | None:
    """When the task could start: its publish time, or its ETA if later."""
    try:
        ready = float(getattr(request, PUBLISHED_AT_HEADER))
    except (AttributeError, TypeError, ValueError):
        return None  # published without the stamp: no guess
    eta = getattr(request, "eta", None)
    if eta:
        with contextlib.suppress(ValueError):
            ready = max(ready, datetime.fromisoformat(str(eta)).timestamp())
    return ready


def _zero_series(labels: tuple[str, str, str, str]) -> None:
    """Create a task's histograms and every outcome (and item) series at 0, so
    rates, ratios and quantiles exist from the first scrape on."""
    if labels in _clock.initialised:
        return
    _clock.initialised.add(labels)
    QUEUE_WAIT.labels(*labels)
    TASK_RUNTIME.labels(*labels)
    for outcome in OUTCOMES:
        TASKS.labels(*labels, outcome)
    task, _, node, worker = labels
    if task == TASK_NAMES["convert_images"]:
        ITEMS_PROCESSED.labels("images", node, worker)
        for reason in ITEM_ERROR_REASONS:
            if reason != "malformed_row":  # the tables' own
                ITEM_ERRORS.labels(reason, node, worker)
    elif task == TASK_NAMES["aggregate_range"]:
        ITEMS_PROCESSED.labels("rows", node, worker)
        ITEMS_PROCESSED.labels("bytes", node, worker)
        ITEM_ERRORS.labels("malformed_row", node, worker)


def zero_worker_series(app: Any, worker: str, queues: Iterable[str]) -> int:
    """Create at 0 the series of every task this worker can receive, before any
    runs; returns how many label sets.

    Prometheus sees no increase in a series whose first scrape already holds
    its final count: without this, a burst that a waiting worker ends between
    two scrapes shows no rate and no quantile. (A worker started by the burst
    itself may still run tasks before its first scrape.)
    """
    consumed = set(queues)
    created = 0
    for task in TASK_NAMES.values():
        if task == TASK_NAMES["fail_job"]:
            continue  # an error callback, run inline by the task that failed
        route = app.amqp.router.route({}, task)
        queue = getattr(route.get("queue"), "name", None)
        if queue in consumed:
            _zero_series((task, str(queue), node_name(), worker))
            created += 1
    return created


def _on_prerun(task_id: str = "", task: Task[Any, Any] | None = None, **_: Any) -> None:
    if task is None:
        return
    request = task.request
    labels = _labels_of(task.name, request)
    _zero_series(labels)
    ready = _ready_at(request)
    if ready is not None:
        # Clocks of two machines may differ a little; a wait is never negative.
        QUEUE_WAIT.labels(*labels).observe(max(0.0, time.time() - ready))
    _clock.started[task_id] = (time.perf_counter(), labels)


def _count_items(task_name: str, result: Any, node: str, worker: str) -> None:
    if not isinstance(result, Mapping):
        return
    if task_name == TASK_NAMES["convert_images"]:
        handled = int(result.get("ok", 0)) + int(result.get("failed", 0))
        ITEMS_PROCESSED.labels("images", node, worker).inc(handled)
        for reason, count in (result.get("errors") or {}).items():
            label = reason if reason in ITEM_ERROR_REASONS else "other"
            ITEM_ERRORS.labels(label, node, worker).inc(int(count))
    elif task_name == TASK_NAMES["aggregate_range"]:
        ITEMS_PROCESSED.labels("rows", node, worker).inc(int(result.get("rows", 0)))
        ITEMS_PROCESSED.labels("bytes", node, worker).inc(int(result.get("bytes", 0)))
        malformed = int(result.get("malformed_rows", 0))
        if malformed:
            ITEM_ERRORS.labels("malformed_row", node, worker).inc(malformed)


#: Tasks whose success ends a job.
_JOB_ENDING = frozenset({TASK_NAMES["finish_images"], TASK_NAMES["finish_table"]})


def _observe_job_end(job_id: str) -> None:
    if _clock.store is not None:
        observe_job_end(_clock.store(), job_id)


def observe_job_end(store: JobStore, job_id: str) -> None:
    """Observe a finished job's duration once, whichever process sees it first
    (the worker that ends it, or the producer that cancels it)."""
    try:
        record = store.get(job_id)
        if not record.finished or record.finished_at is None:
            return
        if store.claim(f"metrics:job-duration:{job_id}"):
            JOB_DURATION.labels(record.kind, record.state).observe(
                max(0.0, record.finished_at - record.created_at)
            )
    except Exception:  # metrics never fail a task
        logger.debug("could not read job %s for its duration", job_id, exc_info=True)


def _on_postrun(
    task_id: str = "",
    task: Task[Any, Any] | None = None,
    retval: Any = None,
    state: str | None = None,
    kwargs: Mapping[str, Any] | None = None,
    **_: Any,
) -> None:
    if task is None:
        return
    started = _clock.started.pop(task_id, None)
    if started is not None:
        begun, labels = started
        TASK_RUNTIME.labels(*labels).observe(time.perf_counter() - begun)
        if state == "SUCCESS":
            _count_items(task.name, retval, labels[2], labels[3])
    job_id = (kwargs or {}).get("job_id")
    ended = state == "FAILURE" or (state == "SUCCESS" and task.name in _JOB_ENDING)
    if job_id and ended:
        _observe_job_end(str(job_id))


def _outcome_labels(sender: Any, task_id: str | None) -> tuple[str, str, str, str]:
    """Labels of a task by id: from its pool process, else from the main process's
    request (hard time limits and lost pool processes are seen there)."""
    if task_id and task_id in _clock.started:
        return _clock.started[task_id][1]
    from celery.worker import state

    request = state.requests.get(task_id) if task_id else None
    name = getattr(sender, "name", None) or getattr(request, "name", "unknown")
    return _labels_of(str(name), request or getattr(sender, "request", None))


def _count(outcome: str, sender: Any, task_id: str | None) -> None:
    try:
        TASKS.labels(*_outcome_labels(sender, task_id), outcome).inc()
    except Exception:  # metrics never fail a task
        logger.debug("could not count a %s task", outcome, exc_info=True)


def _on_success(sender: Any = None, **_: Any) -> None:
    _count("succeeded", sender, getattr(getattr(sender, "request", None), "id", None))


def _on_failure(sender: Any = None, task_id: str | None = None, **_: Any) -> None:
    _count("failed", sender, task_id)


def _on_retry(sender: Any = None, request: Any = None, **_: Any) -> None:
    _count("retried", sender, getattr(request, "id", None))


def _on_revoked(sender: Any = None, request: Any = None, **_: Any) -> None:
    name = getattr(sender, "name", None) or "unknown"
    TASKS.labels(*_labels_of(str(name), request), "revoked").inc()


def _on_process_exit(pid: int | None = None, **_: Any) -> None:
    path = os.environ.get(MULTIPROC_DIR_ENV)
    if path:
        mark_process_dead(pid or os.getpid(), path)  # type: ignore[no-untyped-call]


# --- Worker: main process ----------------------------------------------------------


def prepare_multiprocess_dir(base: Path, nodename: str) -> Path:
    """Point prometheus-client at a fresh folder for this worker, before it forks.

    Sets ``PROMETHEUS_MULTIPROC_DIR`` (pool processes inherit it) and removes the
    files a previous run of the same worker left.
    """
    path = base / re.sub(r"[^A-Za-z0-9_.@-]", "_", nodename)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)
    os.environ[MULTIPROC_DIR_ENV] = str(path)
    # prometheus-client picks its value class at import; pick again now that the
    # folder is known. Series are created later: at 0 when the worker is ready,
    # then by the tasks in the pool processes.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return path


#: File kinds whose values add up across processes (gauges do not).
_ADDITIVE = ("counter", "histogram", "summary")


def fold_dead_processes(path: Path, alive: Callable[[int], bool] = pid_alive) -> int:
    """Add the files of exited pool processes into one archive file per kind.

    A recycled pool process (``max_tasks_per_child``) leaves its files behind; the
    sums stay right, and the folder stops growing. Returns how many were folded.
    """
    folded = 0
    for file in sorted(path.glob("*.db")):
        kind, _, pid = file.stem.rpartition("_")
        kind = kind.split("_")[0]
        if not pid.isdigit() or alive(int(pid)):
            continue
        if kind in _ADDITIVE:
            _fold(file, path / f"{kind}_archive.db")
            file.unlink()
            folded += 1
        mark_process_dead(int(pid), str(path))  # type: ignore[no-untyped-call]
    return folded


def _fold(file: Path, archive_path: Path) -> None:
    """Add one process's file into the archive file (both prometheus-client's)."""
    # prometheus-client's mmap helpers carry no type annotations.
    read: Any = MmapedDict.read_all_values_from_file
    archive: Any = MmapedDict(str(archive_path))  # type: ignore[no-untyped-call]
    try:
        for key, value, _ts, _pos in read(str(file)):
            before, _ = archive.read_value(key)
            archive.write_value(key, before + value, 0.0)
    finally:
        archive.close()


class _FolderCollector:
    """The pool processes' samples, merged, after folding those of exited ones."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            fold_dead_processes(self.path)
            files = sorted(str(f) for f in self.path.glob("*.db"))
            merged = MultiProcessCollector.merge(files)  # type: ignore[no-untyped-call]
            return list(merged)


class WorkerCollector:
    """Gauges of one worker, read from its main process at scrape time."""

    def __init__(
        self, worker: str, *, queues: Sequence[str], pool_processes: int
    ) -> None:
        self.worker = worker
        self.queues = list(queues)
        self.pool_processes = pool_processes

    def collect(self) -> Iterator[Metric]:
        from celery.worker import state

        labels = ["node", "worker"]
        node = node_name()
        tasks = GaugeMetricFamily(
            "batchgrid_worker_tasks",
            "Tasks this worker holds: reserved (waiting for a pool process), active "
            "(running) or scheduled (waiting for their ETA).",
            labels=[*labels, "state"],
        )
        # len() of the WeakSets is safe from this thread; iterating them is not.
        active = len(state.active_requests)
        waiting = max(0, len(state.reserved_requests) - active)
        tasks.add_metric([node, self.worker, "reserved"], waiting)
        tasks.add_metric([node, self.worker, "active"], active)
        scheduled = getattr(state, "scheduled_requests", ())
        tasks.add_metric([node, self.worker, "scheduled"], len(scheduled))
        yield tasks
        pool = GaugeMetricFamily(
            "batchgrid_worker_pool_processes",
            "Pool processes of this worker (its concurrency).",
            labels=labels,
        )
        pool.add_metric([node, self.worker], self.pool_processes)
        yield pool
        consuming = GaugeMetricFamily(
            "batchgrid_worker_consuming",
            "1 for each queue this worker consumes.",
            labels=["queue", *labels],
        )
        for queue in self.queues:
            consuming.add_metric([queue, node, self.worker], 1)
        yield consuming


class BrokerCollector:
    """Queue backlogs and jobs in progress, read from Redis at scrape time.

    A queue's length counts every list behind it (with priorities, Redis holds one
    list per priority step); its in-flight count, the messages workers hold
    unacknowledged, is what a list-length scaler misses.
    """

    def __init__(
        self, settings: Settings, queues: Sequence[str], store: JobStore | None
    ) -> None:
        self.queues = list(queues)
        self.store = store
        # TODO(AMQP brokers): queue lengths come from celery-exporter there.
        self._broker = broker_client(settings)

    def collect(self) -> Iterator[Metric]:
        if self._broker is not None:
            yield from self._queues(self._broker)
        if self.store is not None:
            yield from self._jobs(self.store)

    def _queues(self, broker: redis.Redis) -> Iterator[Metric]:
        try:
            backlogs = read_backlog(broker, self.queues)
        except redis.RedisError as exc:
            logger.warning("metrics: the broker did not answer (%s)", exc)
            return
        families = {
            "waiting": GaugeMetricFamily(
                "batchgrid_queue_length",
                "Messages waiting in the queue, all priority lists counted.",
                labels=["queue"],
            ),
            "in_flight": GaugeMetricFamily(
                "batchgrid_queue_in_flight",
                "Messages of the queue that workers hold unacknowledged "
                "(prefetched or running).",
                labels=["queue"],
            ),
            "total": GaugeMetricFamily(
                "batchgrid_queue_backlog",
                "Waiting plus in-flight messages: the autoscaling signal.",
                labels=["queue"],
            ),
        }
        for queue, backlog in backlogs.items():
            for field, family in families.items():
                family.add_metric([queue], getattr(backlog, field))
        yield from families.values()
        yield GaugeMetricFamily(
            "batchgrid_broker_unacked_messages",
            "Messages delivered to workers and not acknowledged yet, all queues "
            "(prefetched or running; invisible to the queue length).",
            value=sum(backlog.in_flight for backlog in backlogs.values()),
        )

    def _jobs(self, store: JobStore) -> Iterator[Metric]:
        try:
            counts = store.count_unfinished(limit=MAX_SCANNED_JOBS)
        except redis.RedisError as exc:
            logger.warning("metrics: the job store did not answer (%s)", exc)
            return
        jobs = GaugeMetricFamily(
            "batchgrid_jobs_in_progress",
            f"Queued and running jobs among the {MAX_SCANNED_JOBS} most recent.",
            labels=["kind", "state"],
        )
        for kind in ("images", "tables"):
            for state in ("queued", "running"):
                jobs.add_metric([kind, state], counts.get((kind, state), 0))
        yield jobs


def serve_worker_metrics(
    settings: Settings,
    *,
    path: Path,
    worker: WorkerCollector,
    store: JobStore | None,
) -> bool:
    """Serve ``/metrics`` from the worker's main process; False if the port is taken."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_FolderCollector(path))
    registry.register(worker)
    registry.register(BrokerCollector(settings, worker.queues, store))
    try:
        start_http_server(
            settings.metrics_port, addr=settings.metrics_host, registry=registry
        )
    except OSError as exc:
        logger.error(
            "metrics: cannot listen on %s:%d (%s); set BATCHGRID_METRICS_PORT to a "
            "free port (0: off)",
            settings.metrics_host,
            settings.metrics_port,
            exc,
        )
        return False
    logger.info(
        "metrics on http://%s:%d/metrics", settings.metrics_host, settings.metrics_port
    )
    return True


class _WorkerHooks:
    """Connects the worker's metrics to Celery's signals (once per process)."""

    def __init__(
        self, settings: Callable[[], Settings], store: Callable[[], JobStore]
    ) -> None:
        self.settings = settings
        self.store = store
        self.path: Path | None = None
        self.serving = False

    def on_init(self, sender: Any = None, **_: Any) -> None:
        _clock.worker = str(sender)
        settings = self.settings()
        if not settings.metrics_port:
            return
        base = settings.metrics_dir or settings.data_dir / "metrics"
        self.path = prepare_multiprocess_dir(base, str(sender))

    def on_ready(self, sender: Any = None, **_: Any) -> None:
        # Sent again when the consumer restarts after a broker outage: serve once.
        if self.path is None or sender is None or self.serving:
            return
        self.serving = True
        queues = [queue.name for queue in sender.task_consumer.queues]
        zero_worker_series(sender.app, str(sender.hostname), queues)
        worker = WorkerCollector(
            str(sender.hostname),
            queues=queues,
            pool_processes=int(getattr(sender.pool, "num_processes", 0) or 1),
        )
        serve_worker_metrics(
            self.settings(), path=self.path, worker=worker, store=self.store()
        )


def install_worker_hooks(
    settings: Callable[[], Settings], store: Callable[[], JobStore]
) -> None:
    """Record task metrics in this worker and serve them when it is ready.

    ``settings`` and ``store`` are called late, once the worker knows them.
    """
    install_publish_hook()
    _clock.store = store
    hooks = _WorkerHooks(settings, store)
    connections: list[tuple[Any, Callable[..., None]]] = [
        (signals.celeryd_init, hooks.on_init),
        (signals.worker_ready, hooks.on_ready),
        (signals.task_prerun, _on_prerun),
        (signals.task_postrun, _on_postrun),
        (signals.task_success, _on_success),
        (signals.task_failure, _on_failure),
        (signals.task_retry, _on_retry),
        (signals.task_revoked, _on_revoked),
        (signals.worker_process_shutdown, _on_process_exit),
    ]
    for signal, handler in connections:
        uid = f"batchgrid.metrics.{signal.name}"
        signal.connect(handler, weak=False, dispatch_uid=uid)


# --- Producer ----------------------------------------------------------------------


class _Combined:
    def __init__(self, *collectors: Any) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


def producer_registry(settings: Settings, store: JobStore | None) -> Any:
    """This process's metrics plus queue lengths and jobs in progress, for an API's
    ``/metrics`` (pass it to ``generate_latest``)."""
    queues = [settings.images_queue, settings.tables_queue]
    return _Combined(REGISTRY, BrokerCollector(settings, queues, store))
