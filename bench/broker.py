"""The price of one Celery task through the embedded broker, and the benchmark's own
worker (``bench.worker``) that the no-op and naive measurements run on.
"""

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import redis
from celery import Celery

from batchgrid.celery_app import create_app
from batchgrid.settings import Settings
from bench.harness import BENCH_QUEUE, NOOP_TASK, REPO_ROOT, quiet

__all__ = ["bench_worker", "measure_noop"]

logger = logging.getLogger(__name__)

#: How long the benchmark worker gets to answer its first task.
WORKER_START_TIMEOUT_S = 90.0
#: Tasks sent before measuring, so imports and connections are paid already.
WARMUP_TASKS = 50
#: How often the client checks whether every no-op task has a result.
RESULT_POLL_S = 0.2


@contextlib.contextmanager
def bench_worker(
    settings: Settings, *, concurrency: int, log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``celery -A bench.worker worker -Q bench`` against the settings' broker."""
    assert settings.broker_url is not None and settings.job_store_url is not None
    env = {
        **os.environ,
        "BATCHGRID_BROKER_URL": settings.broker_url,
        "BATCHGRID_RESULT_BACKEND_URL": settings.job_store_url,
        "BATCHGRID_STORAGE_ROOTS": ",".join(settings.storage_roots),
        "PYTHONPATH": str(REPO_ROOT),
    }
    command = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "bench.worker",
        "worker",
        "-Q",
        BENCH_QUEUE,
        "-P",
        "prefork",
        "--concurrency",
        str(concurrency),
        "--without-gossip",
        "--without-mingle",
        "--loglevel=WARNING",
        "--hostname",
        f"bench{os.getpid()}@%h",
    ]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        app = create_app(settings)
        app.send_task(NOOP_TASK, queue=BENCH_QUEUE).get(timeout=WORKER_START_TIMEOUT_S)
        yield process
    finally:
        # SIGTERM to the main process alone: a warm shutdown.
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def _cpu_s(process: psutil.Process) -> float:
    """CPU seconds of a process and of its children that have exited."""
    times = process.cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def _tree_cpu_s(pid: int) -> float:
    """CPU seconds of a worker: main process, live pool processes, reaped ones."""
    main = psutil.Process(pid)
    total = _cpu_s(main)
    for child in main.children(recursive=True):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = child.cpu_times()
            total += times.user + times.system
    return total


def _own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def _wait_results(client: redis.Redis, ids: list[str], timeout_s: float) -> None:
    keys = [f"celery-task-meta-{task_id}" for task_id in ids]
    deadline = time.monotonic() + timeout_s
    while client.exists(*keys) < len(keys):
        if time.monotonic() > deadline:
            raise RuntimeError("no-op tasks did not all finish in time")
        time.sleep(RESULT_POLL_S)


def measure_noop(
    settings: Settings, *, tasks: int, valkey_pid: int, log_dir: Path
) -> dict[str, Any]:
    """CPU milliseconds per no-op task: worker, client (sending) and broker.

    The client sends every task, then waits for their results with one cheap
    ``EXISTS`` every 0.2 s (a batchgrid producer never waits on task results).
    """
    assert settings.job_store_url is not None
    app: Celery = create_app(settings)
    client = redis.Redis.from_url(settings.job_store_url)
    broker_process = psutil.Process(valkey_pid)
    with bench_worker(settings, concurrency=1, log_path=log_dir / "noop.log") as proc:
        warm = [
            app.send_task(NOOP_TASK, queue=BENCH_QUEUE).id for _ in range(WARMUP_TASKS)
        ]
        _wait_results(client, warm, timeout_s=120)

        quiet.wait()
        worker_before = _tree_cpu_s(proc.pid)
        broker_before = _cpu_s(broker_process)
        client_before = _own_cpu_s()
        started = time.perf_counter()
        ids = [app.send_task(NOOP_TASK, queue=BENCH_QUEUE).id for _ in range(tasks)]
        client_cpu_s = _own_cpu_s() - client_before
        sent_s = time.perf_counter() - started
        _wait_results(client, ids, timeout_s=600)
        wall_s = time.perf_counter() - started
        worker_cpu_s = _tree_cpu_s(proc.pid) - worker_before
        broker_cpu_s = _cpu_s(broker_process) - broker_before
    client.close()

    per_task_ms = {
        "worker": 1000 * worker_cpu_s / tasks,
        "client": 1000 * client_cpu_s / tasks,
        "broker": 1000 * broker_cpu_s / tasks,
    }
    per_task_ms["total"] = sum(per_task_ms.values())
    logger.info(
        "no-op task: %.2f ms CPU (worker %.2f, client %.2f, broker %.2f)",
        per_task_ms["total"],
        per_task_ms["worker"],
        per_task_ms["client"],
        per_task_ms["broker"],
    )
    return {
        "tasks": tasks,
        "cpu_ms_per_task": per_task_ms,
        "send_s": sent_s,
        "wall_s": wall_s,
        "tasks_per_s": tasks / wall_s,
    }
