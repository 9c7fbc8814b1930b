"""kombu's Redis transport, made to survive the broker dying under it.

When Redis goes away, Celery's consumer first collects its connection (which
drops the transport's reference to it), then closes it. Closing the default
channel tries to hand its unacknowledged messages back, and a task still running
then acks on that channel once it ends; both need the reference just dropped.
kombu 5.7 raises ``AttributeError`` there, which is not a connection error, so
the worker stops with "Unrecoverable error" instead of reconnecting. Here both
give up quietly: the messages stay in Redis's ``unacked`` hash, and the
visibility timeout hands them back as for any worker that died.
``batchgrid.celery_app`` makes it the transport of ``redis://`` and ``rediss://``
broker URLs.

TODO(kombu bug): seen with kombu 5.7.0 and celery 5.7.0; drop this module once a
kombu release restores unacked messages after a collected connection without
raising.
"""

import logging
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

__all__ = ["Transport"]

logger = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):
    """Leaves unacknowledged messages in Redis when they cannot be handed back."""

    def _collected(self) -> bool:
        """Whether this channel's connection was dropped (a broker outage)."""
        return getattr(self.channel.connection, "client", None) is None

    def _settle(self, settle: Any, delivery_tag: Any, what: str) -> None:
        """Ack or reject; on a dropped connection, leave the message to Redis."""
        try:
            settle()
        except AttributeError:
            if not self._collected():
                raise  # not the collected connection: a bug to see
            logger.warning(
                "broker connection gone: a %s task's message stays in Redis until "
                "the visibility timeout delivers it again (harmless: outcomes are "
                "stored once per item)",
                what,
            )
            virtual.QoS.ack(self, delivery_tag)  # forget it here

    def ack(self, delivery_tag: Any) -> None:
        # A task that ends after the reconnect acks on its old, closed channel.
        self._settle(
            lambda: super(QoS, self).ack(delivery_tag), delivery_tag, "finished"
        )

    def reject(self, delivery_tag: Any, requeue: bool = False) -> None:
        # A task whose process died after the reconnect is rejected on it too.
        self._settle(
            lambda: super(QoS, self).reject(delivery_tag, requeue=requeue),
            delivery_tag,
            "rejected",
        )

    def restore_unacked(self, client: Any = None) -> None:
        try:
            super().restore_unacked(client)
        except AttributeError:
            if not self._collected():
                raise  # not the collected connection: a bug to see
            held = self._delivered
            logger.warning(
                "broker connection gone: %d unacknowledged message(s) stay in Redis "
                "until the visibility timeout hands them back",
                len(held or ()),
            )
            if held is not None:
                held.clear()


class Channel(kombu_redis.Channel):
    """kombu's Redis channel with the QoS above."""

    QoS = QoS


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with the channel above."""

    Channel = Channel
