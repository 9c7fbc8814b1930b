"""The worker process: the Celery app with batchgrid's tasks and logging.

``celery -A batchgrid.worker worker`` works as well as ``batchgrid worker``.
"""

import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celery import Celery, bootsteps, current_task, signals

from batchgrid import tables
from batchgrid import tasks as _tasks  # noqa: F401  (registers the tasks)
from batchgrid.celery_app import create_app
from batchgrid.settings import Settings, get_settings

__all__ = ["app", "configure_logging", "run_worker"]

logger = logging.getLogger(__name__)

_TEXT_FORMAT = (
    "%(asctime)s %(levelname)-7s %(processName)-16s job=%(job_id)s task=%(task_id)s "
    "%(name)s: %(message)s"
)


def _with_task_ids(factory: Any) -> Any:
    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = factory(*args, **kwargs)
        task = current_task
        request = getattr(task, "request", None) if task else None
        record.task_id = getattr(request, "id", None) or "-"
        record.job_id = ((getattr(request, "kwargs", None) or {}).get("job_id")) or "-"
        return record

    return make


def configure_logging(settings: Settings) -> None:
    """Log to stderr with job and task ids on every line; JSON when asked."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_json:
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(processName)s %(name)s %(job_id)s "
                "%(task_id)s %(message)s"
            )
        )
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    if not getattr(logging, "_batchgrid_factory", False):
        logging.setLogRecordFactory(_with_task_ids(logging.getLogRecordFactory()))
        logging._batchgrid_factory = True  # type: ignore[attr-defined]


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    # Connecting here stops Celery from installing its own handlers.
    configure_logging(get_settings())


@signals.worker_process_init.connect
def _warm_up(**_: Any) -> None:
    # pyarrow's first group-by in a process costs about 0.5 s; pay it at start,
    # not inside the first task (and its latency metrics).
    tables.aggregate_range(
        b"a,1\n",
        names=["k", "v"],
        by=["k"],
        values=["v"],
        dialect=tables.CsvDialect(),
        quoted=False,
    )


class Heartbeat(bootsteps.StartStopStep):
    """Touches the heartbeat file from the consumer's event loop."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        settings = get_settings()
        self.path: Path | None = settings.heartbeat_file
        self.interval_s = settings.heartbeat_interval_s
        self.timer_entry: Any = None

    def start(self, parent: Any) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        self.timer_entry = parent.timer.call_repeatedly(
            self.interval_s, self.path.touch
        )

    def stop(self, parent: Any) -> None:
        if self.timer_entry is not None:
            self.timer_entry.cancel()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _build_app() -> Celery:
    celery_app = create_app(get_settings())
    celery_app.steps["consumer"].add(Heartbeat)
    return celery_app


app = _build_app()


def run_worker(
    *, queues: Sequence[str], concurrency: int | None, hostname: str | None = None
) -> None:
    """Run a worker in this process until told to stop (SIGTERM: warm shutdown)."""
    settings = get_settings()
    argv = [
        "worker",
        f"--loglevel={settings.log_level.upper()}",
        f"--queues={','.join(queues)}",
        # Gossip and mingle only add start-up time and chatter for batch work.
        "--without-gossip",
        "--without-mingle",
    ]
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    if hostname:
        argv.append(f"--hostname={hostname}")
    app.worker_main(argv)
