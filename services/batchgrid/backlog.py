"""How much work a queue holds: messages waiting plus messages in flight.

This is the autoscaling signal. A Redis-list trigger sees only the waiting
messages; with late acknowledgement a message that a worker has taken (prefetched
or running) moves to kombu's ``unacked`` hash until its task ends, so a busy fleet
would read as idle and be scaled in. :func:`read_backlog` counts both::

    >>> read_backlog(client, ["images"])["images"]
    Backlog(queue='images', waiting=120, in_flight=8)

A message taken by a worker that then died stays in ``unacked`` until the
visibility timeout hands it back, so it keeps counting: it is work still to do.
"""

import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel

from batchgrid.settings import Settings

__all__ = ["Backlog", "broker_client", "queue_keys", "read_backlog"]

logger = logging.getLogger(__name__)

#: A scrape or a scaler poll gives up on the broker after this long.
BROKER_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class Backlog:
    """One queue's work: ``waiting`` in its lists, ``in_flight`` held by workers."""

    queue: str
    waiting: int
    in_flight: int

    @property
    def total(self) -> int:
        """What a scaler should provide workers for: waiting plus in flight."""
        return self.waiting + self.in_flight


def queue_keys(queue: str) -> list[str]:
    """The Redis lists that hold a queue's messages: one per priority step."""
    return [queue, *(f"{queue}{Channel.sep}{step}" for step in PRIORITY_STEPS if step)]


def broker_client(settings: Settings) -> redis.Redis | None:
    """A client of the broker when it is Redis-protocol, else None (RabbitMQ)."""
    broker = settings.broker_url or ""
    if not broker.startswith("redis"):
        return None
    return redis.Redis.from_url(
        broker,
        socket_timeout=BROKER_TIMEOUT_S,
        socket_connect_timeout=BROKER_TIMEOUT_S,
    )


def _queue_of(held: bytes, queues: set[str]) -> str | None:
    """The queue a held message came from: its routing key (or exchange)."""
    try:
        _, exchange, routing_key = json.loads(held)
    except (ValueError, TypeError):
        return None
    for name in (routing_key, exchange):
        if name in queues:
            return str(name)
    return None


def read_backlog(client: redis.Redis, queues: Sequence[str]) -> dict[str, Backlog]:
    """Waiting and in-flight messages per queue, read in one transaction.

    ``unacked`` holds at most what the fleet has taken (processes times
    prefetch), so reading it whole stays cheap. Raises ``redis.RedisError``
    when the broker does not answer.
    """
    steps = len(queue_keys(""))
    with client.pipeline(transaction=True) as pipe:
        for queue in queues:
            for key in queue_keys(queue):
                pipe.llen(key)
        pipe.hvals(Channel.unacked_key)
        *lengths, held = pipe.execute()

    names = set(queues)
    in_flight = Counter(_queue_of(message, names) for message in held)
    return {
        queue: Backlog(
            queue=queue,
            waiting=sum(lengths[index * steps : (index + 1) * steps]),
            in_flight=in_flight[queue],
        )
        for index, queue in enumerate(queues)
    }
