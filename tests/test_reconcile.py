"""Tasks the Redis broker lost are sent again, and the job completes.

kombu pops a message (BRPOP) a moment before it records it as unacknowledged;
a worker killed, or a Redis server crashed, in that moment loses it. The tests
make that loss on purpose, by taking a message off the queue before any worker
reads it, and expect the workers' reconciler to find the job stalled and send the
task again; then the same for a job whose every item is done but whose closing
callback was lost.
"""

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import assert_matches_reference, pandas_reference
from tests.faultkit import FaultCluster, broker, fault_cluster, write_csv

pytestmark = [pytest.mark.integration, pytest.mark.faults]

#: A sweep every second, of jobs idle for two: a lost task is found in seconds.
RECONCILE = {"reconcile_interval_s": 1, "reconcile_after_s": 2}


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[FaultCluster]:
    (tmp_path / "root").mkdir()
    with broker("valkey", tmp_path / "broker") as found:
        running = fault_cluster(found, tmp_path / "root", **RECONCILE)
        try:
            yield running
        finally:
            running.stop()


def _logs(cluster: FaultCluster) -> str:
    return "".join(
        group.log_path(index).read_text()
        for group in cluster.groups
        for index in range(group.count)
    )


def test_a_range_the_broker_lost_is_sent_again_and_counted_once(
    cluster: FaultCluster,
) -> None:
    csv = write_csv(cluster.root / "t.csv", rows=20_000, seed=3)
    reference = pandas_reference(csv, by=["region"], values=["qty"])
    job_id = cluster.producer.submit_table(
        str(csv), by=["region"], values=["qty"], chunk_bytes=100_000
    )
    broker_client = redis.Redis.from_url(cluster.broker.url)
    # The message the first worker would take, gone as in the BRPOP window.
    assert broker_client.rpop(cluster.broker.tables_queue) is not None

    cluster.add_workers("w")
    record = cluster.wait(job_id)

    result = cluster.store.result(job_id)
    assert record.state == "succeeded" and result is not None
    assert_matches_reference(result, reference)
    assert "was lost by the broker; sending it again" in _logs(cluster)


def test_a_job_whose_closing_callback_was_lost_is_ended(
    cluster: FaultCluster,
) -> None:
    store = cluster.store
    queue = cluster.broker.images_queue
    job_id = store.create("images", total=1, options={"sources": [], "tasks": 1})
    store.set_tasks(
        job_id,
        {
            "t-1": {
                "name": "batchgrid.images.convert",
                "queue": queue,
                "kwargs": {},
                "items": ["a.jpg"],
            }
        },
    )
    store.mark_published(job_id)
    # Its one task ran and recorded its item, but no callback came after it.
    assert store.record(job_id, {"a.jpg": {"size": [1, 1]}})

    cluster.add_workers("w")
    deadline = time.monotonic() + 30
    while not (record := store.get(job_id)).finished:
        assert time.monotonic() < deadline, f"job still {record.state}"
        time.sleep(0.1)

    assert record.state == "succeeded"
    assert "every item done, ending it again" in _logs(cluster)


def test_a_healthy_job_sends_nothing_again(cluster: FaultCluster) -> None:
    csv = write_csv(cluster.root / "h.csv", rows=20_000, seed=4)
    cluster.add_workers("w")

    record = cluster.wait(
        cluster.producer.submit_table(
            str(csv), by=["region"], values=["qty"], chunk_bytes=100_000
        )
    )
    time.sleep(3)  # sweeps after the end find nothing to do

    assert record.state == "succeeded"
    assert "sending it again" not in _logs(cluster)
    assert "ending it again" not in _logs(cluster)
