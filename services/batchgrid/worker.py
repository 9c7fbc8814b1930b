"""The worker process: the Celery app with batchgrid's tasks and logging.

``celery -A batchgrid.worker worker`` works as well as ``batchgrid worker``.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from celery import Celery, bootsteps, signals

from batchgrid import metrics, tables
from batchgrid import tasks as _tasks  # registers the tasks
from batchgrid.celery_app import create_app
from batchgrid.limits import limit_task_memory
from batchgrid.logs import configure_logging
from batchgrid.reconcile import Reconciler
from batchgrid.settings import get_settings

__all__ = ["app", "run_worker"]

# Queue wait, runtime and outcomes of every task; /metrics on BATCHGRID_METRICS_PORT.
metrics.install_worker_hooks(get_settings, _tasks.job_store)


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
    # Only now, so that what the warm-up holds is not counted against tasks.
    limit_task_memory(get_settings().max_task_memory_bytes)


class Heartbeat(bootsteps.StartStopStep):
    """Touches the heartbeat file from the consumer's event loop.

    The file stays when the consumer restarts (a broker outage), so a probe
    with a threshold above the reconnect time does not kill a waiting worker;
    it is removed when the worker shuts down.
    """

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
            self.timer_entry = None


@signals.worker_shutdown.connect
def _remove_heartbeat(**_: Any) -> None:
    path = get_settings().heartbeat_file
    if path is not None:
        path.unlink(missing_ok=True)


_reconciler: list[Reconciler] = []


@signals.worker_ready.connect
def _start_reconciler(sender: Any = None, **_: Any) -> None:
    # The main process looks for tasks the broker lost (see batchgrid.reconcile).
    reconciler = Reconciler(get_settings(), app)
    reconciler.start()
    _reconciler.append(reconciler)


@signals.worker_shutdown.connect
def _stop_reconciler(**_: Any) -> None:
    while _reconciler:
        _reconciler.pop().stop()


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
