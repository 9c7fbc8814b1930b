"""The integration essentials on each broker: Valkey, and RabbitMQ when one answers.

RabbitMQ carries the tasks (durable queues, persistent messages, publisher
confirms); job records and chord counts stay in Redis (here embedded Valkey).
The SIGKILL, whole-worker, SIGTERM, poison and duplicate-delivery faults run on
both brokers in ``test_faults.py``.
"""

import io
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import assert_matches_reference, pandas_reference
from tests.faultkit import (
    FaultCluster,
    broker,
    fault_cluster,
    held_producer,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", params=["valkey", "rabbitmq"])
def on_broker(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FaultCluster]:
    """A worker of two pool processes on the broker named by the parameter."""
    kind: str = request.param
    root = tmp_path_factory.mktemp(kind)
    with broker(kind, root / "valkey") as found:
        running = fault_cluster(found, root)
        running.add_workers(kind)
        yield running
        running.stop()


def test_images_job_with_bad_files_reports_each_by_name(
    on_broker: FaultCluster,
) -> None:
    src = on_broker.root / "images"
    src.mkdir()
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 48), "orange").save(jpeg, "JPEG")
    for index in range(7):
        (src / f"good-{index}.jpg").write_bytes(jpeg.getvalue())
    (src / "truncated.jpg").write_bytes(jpeg.getvalue()[:300])
    (src / "notes.jpg").write_text("not an image")
    (src / "empty.png").write_bytes(b"")

    record = on_broker.wait(
        on_broker.producer.submit_images([str(src)], str(on_broker.root / "gray"))
    )

    items = on_broker.store.items(record.id)
    assert record.state == "succeeded"
    assert (record.total, record.failed) == (10, 3)
    assert {n: i["error"] for n, i in items.items() if "error" in i} == {
        "truncated.jpg": "truncated",
        "notes.jpg": "unidentified",
        "empty.png": "empty",
    }


def _csv(path: Path, rows: int) -> Path:
    rng = random.Random(rows)
    keys = ["north", '"east, coast"', '"multi\nline"', ""]
    lines = ["region,amount"]
    for _ in range(rows):
        amount = "" if rng.random() < 0.05 else f"{rng.uniform(-50, 500):.2f}"
        lines.append(f"{rng.choice(keys)},{amount}")
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return path


@pytest.mark.parametrize("chunk_bytes", [97, 10**9])
def test_table_job_equals_pandas(on_broker: FaultCluster, chunk_bytes: int) -> None:
    csv = _csv(on_broker.root / f"t{chunk_bytes}.csv", rows=3000)

    record = on_broker.wait(
        on_broker.producer.submit_table(
            str(csv), by=["region"], values=["amount"], chunk_bytes=chunk_bytes
        )
    )

    result = on_broker.store.result(record.id)
    assert record.state == "succeeded" and result is not None
    assert_matches_reference(
        result, pandas_reference(csv, by=["region"], values=["amount"])
    )


def test_rabbitmq_queues_are_durable_and_task_messages_persistent(
    on_broker: FaultCluster,
) -> None:
    if on_broker.broker.kind != "rabbitmq":
        pytest.skip("durability flags are RabbitMQ's; Redis keeps its AOF")
    from amqp.exceptions import PreconditionFailed
    from kombu import Connection, Exchange, Queue

    producer, held = held_producer(on_broker)
    csv = _csv(on_broker.root / "held.csv", rows=50)
    producer.submit_table(str(csv), by=["region"], values=["amount"])

    with Connection(on_broker.broker.url) as connection:
        channel = connection.channel()
        message = Queue(held, Exchange(held), held)(channel).get(no_ack=True)
        assert message is not None
        assert message.properties["delivery_mode"] == 2
        for name in (held, on_broker.broker.tables_queue):
            with pytest.raises(PreconditionFailed, match="durable"):
                # Declaring it again as transient is refused: it is durable.
                connection.channel().queue_declare(name, durable=False)
    on_broker.broker.cleanup_queue(held)
