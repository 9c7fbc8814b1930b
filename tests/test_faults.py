"""Faults against real processes: killed workers, a crashed broker, a cut network.

Every test runs a real broker and real ``batchgrid worker`` processes with short
limits (``FAULT_LIMITS``), so lost work comes back in seconds. Tests marked with a
broker parameter run on Valkey and, when it answers, on RabbitMQ. The figures the
README quotes are printed (``pytest -m faults -s``).
"""

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from batchgrid.celery_app import create_app
from batchgrid.jobs import JobRecord
from batchgrid.producer import Producer
from tests.conftest import (
    ApiServer,
    assert_matches_reference,
    make_settings,
    pandas_reference,
)
from tests.faultkit import (
    FAULT_LIMITS,
    Broker,
    FaultCluster,
    Reference,
    ValkeyProcess,
    assert_images_written_once,
    broker,
    busy_child,
    children,
    fault_cluster,
    free_port,
    held_producer,
    held_ranges,
    hungry_child,
    kill_group,
    netns,
    netns_unavailable_reason,
    plant_orphan,
    redeliveries,
    relay,
    rss_bytes,
    settings_env,
    spawn_worker,
    valkey,
    wait_for_file,
    write_csv,
    write_photos,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

#: CSV bytes per range task in these tests: the 12 MB input makes 82 ranges.
CHUNK_BYTES = 150_000


@pytest.fixture(scope="module", params=["valkey", "rabbitmq"])
def fault_broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Broker]:
    kind: str = request.param
    with broker(kind, tmp_path_factory.mktemp(f"{kind}-broker")) as found:
        yield found


@pytest.fixture(scope="module")
def shared_cluster(
    fault_broker: Broker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultCluster]:
    running = fault_cluster(fault_broker, tmp_path_factory.mktemp("faults"))
    running.add_workers("steady")
    yield running
    running.stop()


@pytest.fixture
def cluster(shared_cluster: FaultCluster) -> Iterator[FaultCluster]:
    """One steady worker (two pool processes); tests add the ones they kill, and
    those stop with the test."""
    yield shared_cluster
    for workers in shared_cluster.groups[1:]:
        workers.stop(timeout_s=20)
    del shared_cluster.groups[1:]


@pytest.fixture(scope="module")
def table_input(shared_cluster: FaultCluster) -> tuple[Path, Reference]:
    """A CSV of about 12 MB and pandas' answer on it."""
    csv = write_csv(shared_cluster.root / "trial.csv", rows=180_000, seed=1)
    by, values = ["region"], ["amount", "qty"]
    return csv, pandas_reference(csv, by=by, values=values)


@pytest.fixture(scope="module")
def photos(shared_cluster: FaultCluster) -> list[Path]:
    """24 PNG photos, 1200x900: three per task, about 0.1 s of work each."""
    return write_photos(shared_cluster.root / "photos", 24, size=(1200, 900))


def _note(line: str) -> None:
    print(f"\n[figure] {line}")


def _submit(cluster: FaultCluster, kind: str, csv: Path, out: Path) -> str:
    if kind == "tables":
        return cluster.producer.submit_table(
            str(csv), by=["region"], values=["amount", "qty"], chunk_bytes=CHUNK_BYTES
        )
    return cluster.producer.submit_images([str(cluster.root / "photos")], str(out))


#: SIGKILL trials per broker: each kills one busy pool process mid-job.
TRIALS = {"valkey": 12, "rabbitmq": 4}


def test_pool_process_killed_mid_job_over_many_trials_loses_and_doubles_nothing(
    cluster: FaultCluster,
    table_input: tuple[Path, Reference],
    photos: list[Path],
) -> None:
    csv, reference = table_input
    cluster.add_workers("trials")
    mains = [p.pid for group in cluster.groups for p in group.processes]
    rng = random.Random(7)
    trials = TRIALS[cluster.broker.kind]
    redelivered = 0
    took: list[float] = []

    for trial in range(trials):
        kind = "tables" if trial % 2 == 0 else "images"
        out = cluster.root / f"trial-{trial}"
        orphan = plant_orphan(out)  # as if a process died here before
        started = time.monotonic()
        job_id = _submit(cluster, kind, csv, out)
        target = rng.uniform(0.05, 0.6)  # kill once this share of items is done
        while (now := cluster.store.get(job_id)).done < target * now.total:
            time.sleep(0.005)
        victim = busy_child(mains, timeout_s=5)
        assert victim is not None, f"trial {trial}: no pool process was busy"
        os.kill(victim, signal.SIGKILL)
        record = cluster.wait(job_id)
        took.append(time.monotonic() - started)

        assert record.state == "succeeded", (trial, record.error)
        failures = {
            item: outcome
            for item, outcome in cluster.store.items(job_id).items()
            if "error" in outcome
        }
        assert record.done == record.total and failures == {}, (trial, failures)
        if kind == "tables":
            orphan.unlink()
            result = cluster.store.result(job_id)
            assert result is not None
            assert sorted(cluster.store.items(job_id), key=int) == [
                str(index) for index in range(record.total)
            ]
            assert_matches_reference(result, reference)
        again = redeliveries(cluster.store, job_id) > 0
        if kind == "images":
            if again:  # the batch delivered again cleaned up after the dead
                assert not orphan.exists()
            orphan.unlink(missing_ok=True)
            assert_images_written_once(cluster.store, job_id, photos, out)
        redelivered += again

    # A busy process was killed each time: often mid-task, so its task came back.
    assert redelivered >= trials // 3, f"only {redelivered} of {trials} redelivered"
    _note(
        f"{cluster.broker.kind}: {trials} SIGKILL trials, {trials} jobs complete, "
        f"{redelivered} with a task delivered again, 0 lost, 0 counted twice; "
        f"job time {min(took):.1f}-{max(took):.1f} s"
    )


def test_whole_worker_killed_its_tasks_return_after_the_visibility_timeout(
    cluster: FaultCluster, table_input: tuple[Path, Reference]
) -> None:
    csv, reference = table_input
    steady = cluster.groups[0]
    for process in steady.processes:
        os.kill(process.pid, signal.SIGSTOP)  # only the doomed worker takes tasks
    doomed = cluster.add_workers("doomed")
    job_id = cluster.producer.submit_table(
        str(csv), by=["region"], values=["amount", "qty"], chunk_bytes=CHUNK_BYTES
    )
    assert busy_child([p.pid for p in doomed.processes]) is not None
    stranded: set[int] = set()
    # RabbitMQ requeues what a lost channel held at once; Redis needs the timeout.
    for _ in range(200 if cluster.broker.kind == "valkey" else 0):
        # Freeze it at a moment it holds ranges it has not recorded, then kill it.
        for process in doomed.processes:
            os.killpg(process.pid, signal.SIGSTOP)
        time.sleep(0.05)  # let a write already on the wire land
        done = set(cluster.store.items(job_id))
        held = held_ranges(cluster.store._redis, job_id)
        stranded = {index for index in held if str(index) not in done}
        if stranded:
            break
        assert len(done) < 0.9 * cluster.store.get(job_id).total, "no range held"
        for process in doomed.processes:
            os.killpg(process.pid, signal.SIGCONT)
        time.sleep(0.005)
    assert stranded or cluster.broker.kind != "valkey", "never held a range"

    kill_group(doomed)
    killed_at = time.monotonic()
    cluster.add_workers("replacement")
    for process in steady.processes:
        os.kill(process.pid, signal.SIGCONT)
    record = cluster.wait(job_id)
    recovered_s = time.monotonic() - killed_at

    result = cluster.store.result(job_id)
    items = cluster.store.items(job_id)
    assert record.state == "succeeded" and result is not None
    assert_matches_reference(result, reference)
    for index in stranded:  # handed back to the others
        assert not items[str(index)]["worker"].startswith("doomed")
    _note(
        f"{cluster.broker.kind}: whole worker SIGKILLed, job done {recovered_s:.1f} s "
        f"later (visibility timeout {FAULT_LIMITS['visibility_timeout_s']} s)"
    )


def test_orphaned_temporary_files_of_dead_processes_are_removed_others_kept(
    tmp_path: Path,
) -> None:
    from batchgrid.storage import remove_orphans

    dead = plant_orphan(tmp_path)
    alive = tmp_path / f".tmp-{socket.gethostname()}~{os.getpid()}~x.part"
    alive.write_bytes(b"still being written")
    elsewhere = tmp_path / ".tmp-otherhost~1~x.part"
    elsewhere.write_bytes(b"another machine's")

    removed = remove_orphans(str(tmp_path))

    assert removed == 1 and not dead.exists()
    assert alive.exists() and elsewhere.exists()


def _strip_workers(items: dict[str, dict[str, object]]) -> dict[str, object]:
    return {
        name: {k: v for k, v in outcome.items() if k != "worker"}
        for name, outcome in items.items()
    }


@pytest.mark.parametrize("kind", ["tables", "images"])
def test_every_task_delivered_twice_changes_neither_outputs_nor_answer(
    cluster: FaultCluster,
    table_input: tuple[Path, Reference],
    photos: list[Path],
    kind: str,
) -> None:
    csv, _ = table_input
    once_out, twice_out = cluster.root / f"once-{kind}", cluster.root / f"twice-{kind}"
    once = cluster.wait(_submit(cluster, kind, csv, once_out))
    producer, held = held_producer(cluster)
    target = (
        cluster.broker.tables_queue if kind == "tables" else cluster.broker.images_queue
    )
    if kind == "tables":
        job_id = producer.submit_table(
            str(csv), by=["region"], values=["amount", "qty"], chunk_bytes=CHUNK_BYTES
        )
    else:
        job_id = producer.submit_images([str(cluster.root / "photos")], str(twice_out))

    moved = relay(cluster.broker.url, held, target, copies=2)
    record = cluster.store.get(job_id)
    while not record.finished:  # the chord's own callback lands in the held queue
        relay(cluster.broker.url, held, target)
        time.sleep(0.2)
        record = cluster.store.get(job_id)

    assert moved == record.total if kind == "tables" else moved > 1
    assert record.state == "succeeded"
    assert (record.done, record.failed) == (once.done, once.failed)
    assert cluster.store.result(job_id) == cluster.store.result(once.id)
    assert (
        _strip_workers(cluster.store.items(job_id))
        == _strip_workers(cluster.store.items(once.id))
        or kind == "tables"
    )
    if kind == "images":
        assert {p.name: p.read_bytes() for p in twice_out.iterdir()} == {
            p.name: p.read_bytes() for p in once_out.iterdir()
        }


def test_job_finishes_even_when_the_chord_never_counts_its_parts(
    cluster: FaultCluster, table_input: tuple[Path, Reference]
) -> None:
    csv, reference = table_input
    producer, held = held_producer(cluster)
    job_id = producer.submit_table(
        str(csv), by=["region"], values=["amount", "qty"], chunk_bytes=CHUNK_BYTES
    )

    relay(cluster.broker.url, held, cluster.broker.tables_queue, without_chord=True)
    record = cluster.wait(job_id)

    result = cluster.store.result(job_id)
    assert record.state == "succeeded" and result is not None
    assert_matches_reference(result, reference)


def test_sigterm_mid_job_finishes_or_requeues_running_tasks_and_loses_nothing(
    cluster: FaultCluster, photos: list[Path]
) -> None:
    stopping = cluster.add_workers("stopping")
    out = cluster.root / "sigterm"
    job_id = cluster.producer.submit_images([str(cluster.root / "photos")], str(out))
    busy_child([p.pid for p in stopping.processes])

    main = stopping.processes[0]
    main.send_signal(signal.SIGTERM)  # the main process alone: a warm shutdown
    sent = time.monotonic()
    code = main.wait(timeout=FAULT_LIMITS["hard_time_limit_s"] + 10)
    stopped_s = time.monotonic() - sent
    record = cluster.wait(job_id)

    assert code == 0
    assert record.state == "succeeded"
    assert_images_written_once(cluster.store, job_id, photos, out)
    log = stopping.log_path(0).read_text()
    assert "warm shutdown" in log.lower()
    _note(
        f"{cluster.broker.kind}: SIGTERM mid-job, worker stopped in {stopped_s:.1f} s "
        f"(hard limit {FAULT_LIMITS['hard_time_limit_s']} s), job complete"
    )


@pytest.fixture
def fresh_cluster(fault_broker: Broker, tmp_path: Path) -> Iterator[FaultCluster]:
    """A worker of its own on queues of its own: fresh pool processes, all of
    one size, which the tests below tell apart by the memory they hold."""
    queues = {
        "images_queue": f"{fault_broker.images_queue}-fresh",
        "tables_queue": f"{fault_broker.tables_queue}-fresh",
    }
    running = fault_cluster(fault_broker, tmp_path, **queues)
    running.add_workers("fresh")
    try:
        yield running
    finally:
        running.stop()
        for name in queues.values():
            fault_broker.cleanup_queue(name)


def test_image_that_kills_its_process_every_time_fails_alone_after_the_limit(
    fresh_cluster: FaultCluster,
) -> None:
    cluster = fresh_cluster
    src = cluster.root / "poison"
    src.mkdir()
    noise = Image.effect_noise((4000, 3000), 80)
    Image.merge("RGB", (noise, noise.rotate(180), noise)).save(
        src / "b-poison.png", compress_level=1
    )
    for name in ("a.png", "c.png"):
        Image.new("RGB", (32, 24), "teal").save(src / name)
    settings = cluster.settings.model_copy(update={"image_batch_bytes": 2**30})
    producer = Producer(settings, create_app(settings), cluster.store)
    mains = [p.pid for group in cluster.groups for p in group.processes]
    idle_rss = max(rss_bytes(c) for main in mains for c in children(main))
    limit = FAULT_LIMITS["max_retries"] + 1

    job_id = producer.submit_images([str(src)], str(cluster.root / "poison-out"))
    kills = 0
    while not cluster.store.get(job_id).finished and kills < limit + 2:
        # Decoding the file takes 80 MB more than an idle process holds: the
        # test plays an out-of-memory killer with a 50 MB margin.
        victim = hungry_child(mains, above_bytes=idle_rss + 50 * 2**20, timeout_s=5)
        if victim is not None:
            os.kill(victim, signal.SIGKILL)
            kills += 1
            while rss_bytes(victim):  # dead and its memory gone, not just signalled
                time.sleep(0.01)
    record = cluster.wait(job_id)

    items = cluster.store.items(job_id)
    assert record.state == "succeeded", record.error
    assert (record.total, record.failed, record.options["tasks"]) == (3, 1, 1)
    assert items["b-poison.png"]["error"] == "worker_lost"
    assert "b-poison.png" in items["b-poison.png"]["message"]
    assert "error" not in items["a.png"] and "error" not in items["c.png"]
    assert kills == limit
    _note(
        f"{cluster.broker.kind}: an image that kills its process is failed alone "
        f"after {kills} tries; the 2 others in its batch succeed"
    )


def test_range_that_always_fails_is_retried_with_backoff_then_fails_the_job(
    cluster: FaultCluster,
) -> None:
    csv = write_csv(cluster.root / "gone.csv", rows=2000, seed=3)
    producer, held = held_producer(cluster)
    job_id = producer.submit_table(str(csv), by=["region"], values=["qty"])
    csv.unlink()
    csv.mkdir()  # every read of the range now fails with an OSError
    started = time.monotonic()

    relay(cluster.broker.url, held, cluster.broker.tables_queue)
    record = cluster.wait(job_id)

    assert record.state == "failed"
    assert record.error is not None
    assert "gone.csv" in record.error and "Is a directory" in record.error
    assert f"{FAULT_LIMITS['max_retries']} retries" in record.error
    _note(
        f"{cluster.broker.kind}: a range failing every read failed its job after "
        f"{FAULT_LIMITS['max_retries']} retries with backoff, "
        f"{time.monotonic() - started:.1f} s"
    )


def test_redis_crash_mid_job_loses_no_task_and_every_client_reconnects(
    tmp_path: Path,
) -> None:
    from batchgrid.cli import wait_for

    with valkey(tmp_path / "valkey") as server:
        # Limits as in production, well above the outage: tasks running when
        # the server goes away wait for it and finish.
        cluster = fault_cluster(
            Broker("valkey", server.url(), server),
            tmp_path,
            soft_time_limit_s=30,
            hard_time_limit_s=40,
            visibility_timeout_s=60,
            # A message popped just as the server died is found in seconds.
            reconcile_interval_s=1,
            reconcile_after_s=5,
        )
        try:
            cluster.add_workers("survivor")
            csv = write_csv(tmp_path / "t.csv", rows=180_000, seed=2)
            reference = pandas_reference(csv, by=["region"], values=["qty"])
            job_id = cluster.producer.submit_table(
                str(csv), by=["region"], values=["qty"], chunk_bytes=100_000
            )
            waited: list[object] = []
            follower = threading.Thread(
                target=lambda: waited.append(
                    wait_for(cluster.store, job_id, timeout_s=90, quiet=True)
                ),
                daemon=True,
            )
            follower.start()
            while cluster.store.get(job_id).done < 10:
                time.sleep(0.05)

            server.crash()  # SIGKILL: only the append-only file remains
            time.sleep(3)  # the broker stays away for a while
            server.start()
            restarted = time.monotonic()
            follower.join(timeout=90)
            done_s = time.monotonic() - restarted
            again = cluster.wait(
                cluster.producer.submit_table(str(csv), by=["region"], values=["qty"])
            )

            [record] = waited
            assert isinstance(record, JobRecord) and record.state == "succeeded"
            result = cluster.store.result(job_id)
            assert result is not None
            assert_matches_reference(result, reference)
            assert again.state == "succeeded"
            assert cluster.store.result(again.id) == result
            _note(
                f"valkey crashed (SIGKILL) mid-job, back 3 s later from its "
                f"append-only file; job done {done_s:.1f} s after the restart"
            )
        finally:
            cluster.stop()


def _cli(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[int, str, float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("BATCHGRID_")}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "batchgrid", *args],
        cwd=tmp_path,
        env={**clean, "BATCHGRID_STORAGE_ROOTS": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, done.stderr, time.monotonic() - started


@pytest.mark.parametrize("kind", ["valkey", "rabbitmq"])
def test_cli_when_the_broker_stays_down_exits_2_with_one_line(
    tmp_path: Path, kind: str
) -> None:
    (tmp_path / "t.csv").write_text("k,v\na,1\n")
    closed = free_port()
    env = {"BATCHGRID_BROKER_URL": f"redis://127.0.0.1:{closed}/0"}
    with contextlib.ExitStack() as stack:
        if kind == "rabbitmq":  # job records reachable, the AMQP broker not
            store = stack.enter_context(valkey(tmp_path / "store"))
            env = {
                "BATCHGRID_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{closed}//",
                "BATCHGRID_RESULT_BACKEND_URL": store.url(),
            }

        code, stderr, took_s = _cli(
            tmp_path, env, "table", "t.csv", "--by", "k", "--value", "v"
        )

    assert code == 2, stderr
    assert "Traceback" not in stderr
    [line] = stderr.strip().splitlines()
    assert line.startswith("error:")
    assert any(word in line for word in ("unreachable", "not answer", "refused"))
    assert took_s < 30
    _note(f"{kind} broker down: the CLI exits 2 after {took_s:.1f} s: {line[:100]}")


def test_api_when_the_broker_is_down_answers_503_not_a_traceback(
    tmp_path: Path,
) -> None:
    csv = tmp_path / "t.csv"
    csv.write_text("k,v\na,1\n")
    with valkey(tmp_path / "store") as store:
        amqp_down = f"amqp://guest:guest@127.0.0.1:{free_port()}//"
        for broker_url, backend in (
            (f"redis://127.0.0.1:{free_port()}/0", None),  # broker and store down
            (amqp_down, store.url()),  # the store answers, the broker not
        ):
            settings = make_settings(tmp_path, broker_url, result_backend_url=backend)
            with ApiServer(settings) as url:
                ready = httpx.get(f"{url}/readyz", timeout=30)
                submitted = httpx.post(
                    f"{url}/jobs/tables",
                    json={"csv": str(csv), "by": ["k"], "values": ["v"]},
                    timeout=60,
                )

            assert ready.status_code == 503, ready.text
            assert "does not answer" in ready.json()["detail"]
            assert submitted.status_code == 503, submitted.text
            assert "Traceback" not in submitted.text


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_worker_started_before_the_broker_connects_once_it_is_up(
    tmp_path: Path,
) -> None:
    server = ValkeyProcess(tmp_path / "valkey")
    cluster = fault_cluster(Broker("valkey", server.url(), server), tmp_path)
    workers = cluster.add_workers("early", start=False)
    starting = threading.Thread(target=workers.start, daemon=True)
    try:
        starting.start()
        deadline = time.monotonic() + 60
        while "Trying again in" not in _read(workers.log_path(0)):
            assert time.monotonic() < deadline, "the worker never tried the broker"
            time.sleep(0.2)  # the worker retries with backoff meanwhile
        server.start()
        starting.join(timeout=60)
        csv = write_csv(tmp_path / "t.csv", rows=2000, seed=4)
        record = cluster.wait(
            cluster.producer.submit_table(str(csv), by=["region"], values=["qty"])
        )

        assert record.state == "succeeded"
        log = workers.log_path(0).read_text()
        assert "Cannot connect to redis://:**@127.0.0.1" in log
        assert "Trying again in" in log
        assert server.password not in log
    finally:
        cluster.stop()
        server.stop()


def test_worker_cut_off_from_the_network_has_its_tasks_redelivered_to_the_others(
    tmp_path: Path,
) -> None:
    if reason := netns_unavailable_reason():
        pytest.skip(reason)
    with (
        netns() as ns,
        valkey(tmp_path / "valkey", bind=("127.0.0.1", ns.host_address)) as server,
    ):
        cluster = fault_cluster(Broker("valkey", server.url(), server), tmp_path)
        host = cluster.add_workers("host")
        heartbeat = tmp_path / "cut.alive"
        remote_url = server.url(host=ns.host_address)
        cut_off = spawn_worker(
            {
                **settings_env(cluster.overrides),
                "BATCHGRID_BROKER_URL": remote_url,
                "BATCHGRID_RESULT_BACKEND_URL": remote_url,
                "BATCHGRID_STORAGE_ROOTS": str(tmp_path),
                "BATCHGRID_HEARTBEAT_FILE": str(heartbeat),
                "BATCHGRID_METRICS_PORT": "0",
            },
            tmp_path / ".logs" / "cut-off.log",
            hostname="cutoff@%h",
            prefix=ns.command(),
        )
        try:
            wait_for_file(heartbeat, cut_off, timeout_s=60)
            csv = write_csv(tmp_path / "t.csv", rows=180_000, seed=5)
            reference = pandas_reference(csv, by=["region"], values=["qty"])
            for process in host.processes:  # the cut-off worker takes the first tasks
                os.kill(process.pid, signal.SIGSTOP)
            job_id = cluster.producer.submit_table(
                str(csv), by=["region"], values=["qty"], chunk_bytes=CHUNK_BYTES
            )
            while not any(
                item["worker"].startswith("cutoff@")
                for item in cluster.store.items(job_id).values()
            ):
                time.sleep(0.02)
            # Freeze the worker at a moment it holds ranges it has not recorded,
            # then cut its link: those ranges can only come back by redelivery.
            stranded: set[int] = set()
            for _ in range(200):
                os.killpg(cut_off.pid, signal.SIGSTOP)
                time.sleep(0.05)  # let a write already on the wire land
                done = set(cluster.store.items(job_id))
                stranded = {
                    index
                    for index in held_ranges(cluster.store._redis, job_id)
                    if str(index) not in done
                }
                if stranded:
                    break
                os.killpg(cut_off.pid, signal.SIGCONT)
                time.sleep(0.005)
            assert stranded, "the cut-off worker never held an unfinished range"
            ns.cut()
            cut_at = time.monotonic()
            os.killpg(cut_off.pid, signal.SIGCONT)  # alive, but alone
            for process in host.processes:
                os.kill(process.pid, signal.SIGCONT)
            record = cluster.wait(job_id)
            recovered_s = time.monotonic() - cut_at

            result = cluster.store.result(job_id)
            items = cluster.store.items(job_id)
            assert record.state == "succeeded" and result is not None
            assert_matches_reference(result, reference)
            for index in stranded:  # done by the others, not by the cut-off one
                assert not items[str(index)]["worker"].startswith("cutoff@")
            _note(
                f"worker cut off (veth down in its namespace): job done "
                f"{recovered_s:.1f} s later (visibility timeout "
                f"{FAULT_LIMITS['visibility_timeout_s']} s)"
            )
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(cut_off.pid, signal.SIGKILL)
            cut_off.wait()
            cluster.stop()
