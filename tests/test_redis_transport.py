"""batchgrid's Redis transport: kombu's, with a broker outage survived."""

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue
from kombu import Producer as Publisher
from kombu.transport import redis as kombu_redis

from batchgrid.celery_app import create_app
from batchgrid.redis_transport import Transport
from batchgrid.settings import Settings

QUEUE = "bgtest-transport"


def test_redis_brokers_use_batchgrid_transport_and_keep_their_urls() -> None:
    settings = Settings(_env_file=None, broker_url="redis://127.0.0.1:6379/0")

    connection = create_app(settings).connection_for_write()

    assert isinstance(connection.transport, Transport)
    assert connection.as_uri().startswith("redis://")


@contextmanager
def _collected_channel(broker_url: str, transport: type) -> Iterator[Any]:
    """A channel holding one unacked message, in the state Celery's consumer
    leaves it on a broker outage: connection collected, pools dropped."""
    client = redis.Redis.from_url(broker_url)
    with Connection(broker_url, transport=transport) as connection:
        channel = connection.channel()
        queue = Queue(QUEUE, Exchange(QUEUE), QUEUE)(channel)
        queue.declare()
        Publisher(channel).publish({"n": 1}, exchange=QUEUE, routing_key=QUEUE)
        assert queue.get(no_ack=False) is not None
        channel.connection.client = None
        channel._pool = None
        try:
            yield channel
        finally:
            client.delete(QUEUE, "unacked", "unacked_index")


def test_restore_after_the_connection_was_collected_leaves_messages_in_unacked(
    broker_url: str,
) -> None:
    client = redis.Redis.from_url(broker_url)
    with _collected_channel(broker_url, Transport) as channel:
        held = client.hlen("unacked")

        channel.qos.restore_unacked()

        assert held >= 1 and client.hlen("unacked") == held  # for the timeout
        assert client.llen(QUEUE) == 0


def test_kombus_own_transport_raises_in_the_same_state(broker_url: str) -> None:
    # The bug the transport works around; when this fails, kombu fixed it and
    # batchgrid.redis_transport can go.
    with (
        _collected_channel(broker_url, kombu_redis.Transport) as channel,
        pytest.raises(AttributeError),
    ):
        channel.qos.restore_unacked()


@pytest.mark.parametrize("settle", ["ack", "reject"])
def test_settling_after_the_connection_was_collected_leaves_the_message_in_unacked(
    broker_url: str, settle: str
) -> None:
    client = redis.Redis.from_url(broker_url)
    with _collected_channel(broker_url, Transport) as channel:
        held = client.hlen("unacked")
        [tag] = list(channel.qos._delivered)

        # A task that ended, or whose process died, after the reconnect.
        if settle == "ack":
            channel.qos.ack(tag)
        else:
            channel.qos.reject(tag, requeue=True)

        channel.qos._flush()

        assert held >= 1 and client.hlen("unacked") == held  # for the timeout
        assert tag not in channel.qos._delivered  # forgotten by this worker


def test_kombus_own_ack_raises_in_the_same_state(broker_url: str) -> None:
    with _collected_channel(broker_url, kombu_redis.Transport) as channel:
        [tag] = list(channel.qos._delivered)

        with pytest.raises(AttributeError):
            channel.qos.ack(tag)
