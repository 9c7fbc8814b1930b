"""The autoscaling signal and scale-in, against a real broker and real workers.

KEDA (or an HPA through prometheus-adapter) sizes each worker Deployment from a
queue's backlog: waiting plus in-flight messages, served by the producer on
``GET /queues/{queue}`` and as ``batchgrid_queue_backlog``. These tests drive a
burst and a drain through real ``batchgrid worker`` processes and check that
backlog, at each step, against the work that was really pending, then stop a busy
worker the way a scale-in does (SIGTERM) and check that nothing is lost.
"""

import os
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from batchgrid.timeline import Sample, write_timeline
from tests.conftest import ApiServer
from tests.faultkit import (
    FaultCluster,
    assert_images_written_once,
    broker,
    fault_cluster,
    write_photos,
)

pytestmark = [pytest.mark.integration, pytest.mark.faults]

#: Worker processes and pool processes per worker in the drain.
WORKERS, CONCURRENCY = 2, 2
#: Images in the burst: one task each, several per pool process.
BURST = 24


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[FaultCluster]:
    with broker("valkey", tmp_path / "broker") as found:
        running = fault_cluster(found, tmp_path / "root", image_batch_max_items=1)
        try:
            yield running
        finally:
            running.stop()


@dataclass
class Step:
    """One reading of the scaling signal, bracketed by two of the job's progress."""

    at_s: float
    waiting: int
    in_flight: int
    #: Images without an outcome just before and just after the reading.
    pending_before: int
    pending_after: int


def _backlog(client: httpx.Client, queue: str) -> tuple[int, int, int]:
    body = client.get(f"/queues/{queue}").json()
    return body["waiting"], body["in_flight"], body["backlog"]


def _pending(cluster: FaultCluster, job_ids: list[str]) -> int:
    records = [cluster.store.get(job_id) for job_id in job_ids]
    return sum(record.total - record.done for record in records)


def test_backlog_follows_a_burst_and_a_drain_counting_work_workers_hold(
    cluster: FaultCluster, tmp_path: Path
) -> None:
    queue = cluster.settings.images_queue
    photos = write_photos(cluster.root / "photos", BURST, size=(1600, 1200))
    processes = WORKERS * CONCURRENCY
    with ApiServer(cluster.settings) as url, httpx.Client(base_url=url) as client:
        idle = _backlog(client, queue)
        first = cluster.producer.submit_images(
            [str(photos[0])], str(cluster.root / "first")
        )
        woken = _backlog(client, queue)
        job_id = cluster.producer.submit_images(
            [str(cluster.root / "photos")], str(cluster.root / "out")
        )
        burst = _backlog(client, queue)

        cluster.add_workers("drain", count=WORKERS, concurrency=CONCURRENCY)
        started = time.monotonic()
        steps: list[Step] = []
        jobs = [first, job_id]
        while not all(cluster.store.get(job).finished for job in jobs):
            before = _pending(cluster, jobs)
            waiting, in_flight, _ = _backlog(client, queue)
            after = _pending(cluster, jobs)
            steps.append(
                Step(time.monotonic() - started, waiting, in_flight, before, after)
            )
            assert time.monotonic() - started < 120, "the burst did not drain"
        deadline = time.monotonic() + 10
        while (drained := _backlog(client, queue)) != (0, 0, 0):
            assert time.monotonic() < deadline, f"backlog stuck at {drained}"
            time.sleep(0.05)

    # Scale-to-zero wakes on the first task; the burst reads whole with no workers.
    assert idle == (0, 0, 0)
    assert woken == (1, 0, 1)
    assert burst == (1 + BURST, 0, 1 + BURST)
    # While draining, the signal never falls below the work really pending. Slack
    # below: a worker's main process moves a message from the list to ``unacked``
    # in two round trips, so one per worker may be in neither. Slack above: a task
    # that has recorded its image is held until acknowledged (one per process),
    # and each job's finishing task is work the image counts do not show.
    for step in steps:
        total = step.waiting + step.in_flight
        assert step.pending_after - WORKERS <= total, step
        assert total <= step.pending_before + processes + len(jobs), step
        assert step.in_flight <= processes, step  # prefetch: one task per process
    # The blind spot of a list-length trigger was seen: an empty list while the
    # fleet still worked on the burst, which the backlog kept counting.
    blind = [s for s in steps if s.waiting == 0 and s.pending_after > 0]
    assert any(s.in_flight > 0 for s in blind)
    assert max(s.in_flight for s in steps) == processes

    timeline = write_timeline(
        [
            Sample(
                s.at_s,
                {"images": WORKERS},
                {"images": s.waiting},
                {"images": s.in_flight},
            )
            for s in steps
        ],
        tmp_path / "timeline.png",
    )
    assert timeline.stat().st_size > 10_000


def test_scale_in_sigterm_hands_running_tasks_back_and_loses_nothing(
    tmp_path: Path,
) -> None:
    with broker("valkey", tmp_path / "broker") as found:
        cluster = fault_cluster(
            found, tmp_path / "root", image_batch_max_items=8, soft_shutdown_timeout_s=1
        )
        try:
            _scale_in(cluster)
        finally:
            cluster.stop()


def _scale_in(cluster: FaultCluster) -> None:
    photos = write_photos(cluster.root / "photos", 16, size=(3000, 2400))
    out = cluster.root / "out"
    leaving = cluster.add_workers("leaving", concurrency=2)
    job_id = cluster.producer.submit_images([str(cluster.root / "photos")], str(out))
    attempts = f"batchgrid:job:{job_id}:attempts"
    deadline = time.monotonic() + 30
    while not cluster.store._redis.exists(attempts):  # a task has started
        assert time.monotonic() < deadline, "no task started"
        time.sleep(0.02)

    main = leaving.processes[0]
    os.kill(main.pid, signal.SIGTERM)  # what the kubelet sends on scale-in
    sent = time.monotonic()
    code = main.wait(timeout=30)
    stopped_s = time.monotonic() - sent
    staying = cluster.add_workers("staying", concurrency=2)
    record = cluster.wait(job_id)

    assert code is not None
    assert stopped_s < cluster.settings.hard_time_limit_s
    assert record.state == "succeeded"
    assert_images_written_once(cluster.store, job_id, photos, out)
    log = leaving.log_path(0).read_text()
    assert "Soft Shutdown" in log
    # What it held past the soft-shutdown window went back to the queue.
    handed_back = re.search(r"Restoring (\d+) unacknowledged message", log)
    assert handed_back and int(handed_back[1]) >= 1, "no task was handed back"
    assert staying.processes[0].poll() is None
