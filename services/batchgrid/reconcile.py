"""Sends again the tasks of a stalled job that the Redis broker lost.

kombu's Redis transport pops a message off its list (``BRPOP``) a moment before
it records it as unacknowledged. A worker killed, or a Redis server that dies, in
that moment leaves the message nowhere: not queued, not held, never redelivered,
and its job waits forever. A task that failed on a broker outage (its result could
not be stored) leaves its item without an outcome too. The sweep finds such
tasks and sends them again under the same id. Outcomes are stored by item, so a
task sent again needlessly changes nothing::

    resent = sweep(settings, app, store, broker)

Every worker runs the sweep every ``reconcile_interval_s`` in a thread of its
main process; a lock in Redis lets one worker of the fleet do it at a time. Only
fully published jobs without progress for ``reconcile_after_s`` are looked at,
and a task is sent again only when two sweeps in a row found it missing, so a
message in motion between a list and ``unacked`` is not taken for lost. A healthy
fleet pays one ``ZREVRANGE`` and one pipelined ``HMGET`` per sweep. RabbitMQ
needs none of this: it redelivers whatever a lost channel held.
"""

import json
import logging
import threading
from collections.abc import Iterable
from typing import Any

import redis
from celery import Celery
from kombu.transport.redis import Channel

from batchgrid.backlog import broker_client, queue_keys
from batchgrid.celery_app import TASK_NAMES
from batchgrid.errors import BatchgridError
from batchgrid.jobs import JobStore
from batchgrid.settings import Settings

__all__ = ["Reconciler", "present_task_ids", "sweep"]

logger = logging.getLogger(__name__)

#: Jobs looked at per sweep: the most recent ones.
RECENT_JOBS = 1000
#: A queue holding more messages than this is not read through; a job waiting
#: behind such a backlog is not lost, and is looked at once the backlog drains.
MAX_SCANNED_MESSAGES = 200_000
#: Messages read per LRANGE while scanning a queue.
_PAGE = 5000
#: Tasks found missing by the last sweep ("job task" strings).
_SUSPECTS_KEY = "batchgrid:reconcile:suspects"


def _task_id(raw: bytes | str) -> str | None:
    """The task id of a message as kombu stores it in a list or in ``unacked``."""
    try:
        message = json.loads(raw)
    except ValueError:
        return None
    if isinstance(message, list):  # unacked: [message, exchange, routing key]
        message = message[0] if message else {}
    if not isinstance(message, dict):
        return None
    headers = message.get("headers") or {}
    task_id = headers.get("id") or message.get("properties", {}).get("correlation_id")
    return str(task_id) if task_id else None


def present_task_ids(client: redis.Redis, queues: Iterable[str]) -> set[str] | None:
    """Ids of the tasks queued in ``queues`` or held by a worker; None when the
    queues are too long to read through (see MAX_SCANNED_MESSAGES).

    Lists first, then ``unacked``: a message on its way from one to the other
    is then seen in the second (but in the instant of a ``BRPOP``, which the
    two-sweep rule covers).
    """
    keys = [key for queue in queues for key in queue_keys(queue)]
    if sum(client.llen(key) for key in keys) > MAX_SCANNED_MESSAGES:
        return None
    found: set[str] = set()
    for key in keys:
        start = 0
        while page := client.lrange(key, start, start + _PAGE - 1):
            found.update(task_id for raw in page if (task_id := _task_id(raw)))
            if len(page) < _PAGE:
                break
            start += _PAGE
    found.update(
        task_id
        for raw in client.hvals(Channel.unacked_key)
        if (task_id := _task_id(raw))
    )
    return found


def _missing_tasks(
    store: JobStore, job_id: str, present: set[str]
) -> tuple[dict[str, dict[str, Any]], bool]:
    """The job's tasks with items lacking an outcome and no message anywhere, and
    whether every item of the job has its outcome."""
    tasks = store.tasks(job_id)
    items = sorted({item for task in tasks.values() for item in task["items"]})
    missing = set(items) - store.recorded(job_id, items)
    lost = {
        task_id: task
        for task_id, task in tasks.items()
        if task_id not in present and not missing.isdisjoint(task["items"])
    }
    return lost, bool(tasks) and not missing


def sweep(settings: Settings, app: Celery, store: JobStore, client: redis.Redis) -> int:
    """Send again the lost tasks of stalled jobs; returns how many were sent."""
    from batchgrid.tasks import send_finish

    stalled = store.stalled(idle_s=settings.reconcile_after_s, limit=RECENT_JOBS)
    suspects = {
        raw.decode() if isinstance(raw, bytes) else str(raw)
        for raw in client.smembers(_SUSPECTS_KEY)
    }
    if not stalled:
        client.delete(_SUSPECTS_KEY)
        return 0
    present = present_task_ids(client, [settings.images_queue, settings.tables_queue])
    if present is None:
        logger.info("reconcile: queues too long to read through; next time")
        return 0
    found: set[str] = set()
    resent = 0
    for job_id in stalled:
        try:
            lost, all_done = _missing_tasks(store, job_id, present)
            if all_done:
                # Every outcome is in but the job never ended: its callback was
                # lost. Sent again at most once per ten idle periods.
                ttl_s = settings.reconcile_after_s * 10
                if store.claim_for(f"reconcile-finish:{job_id}", ttl_s):
                    logger.warning("job %s: every item done, ending it again", job_id)
                    send_finish(app, job_id, store.get(job_id).kind)
                continue
            for task_id, task in lost.items():
                if f"{job_id} {task_id}" not in suspects:
                    found.add(f"{job_id} {task_id}")  # missing once: look again
                    continue
                logger.warning(
                    "job %s: task %s was lost by the broker; sending it again",
                    job_id,
                    task_id,
                )
                fail = app.signature(
                    TASK_NAMES["fail_job"], args=(job_id,), queue=task["queue"]
                )
                app.signature(
                    task["name"], kwargs=task["kwargs"], queue=task["queue"]
                ).apply_async(task_id=task_id, link_error=fail)
                resent += 1
        except (BatchgridError, KeyError, ValueError) as exc:
            logger.warning("reconcile: job %s skipped: %s", job_id, exc)
    with client.pipeline() as pipe:
        pipe.delete(_SUSPECTS_KEY)
        if found:
            pipe.sadd(_SUSPECTS_KEY, *found)
            pipe.expire(_SUSPECTS_KEY, int(settings.reconcile_interval_s * 10) + 60)
        pipe.execute()
    return resent


class Reconciler:
    """Runs :func:`sweep` every ``reconcile_interval_s`` in a daemon thread."""

    def __init__(self, settings: Settings, app: Celery) -> None:
        self.settings = settings
        self.app = app
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="batchgrid-reconcile", daemon=True
        )

    def start(self) -> None:
        """Start sweeping, unless it is off or the broker is not Redis."""
        client = broker_client(self.settings)
        if self.settings.reconcile_interval_s <= 0 or client is None:
            return  # off, or RabbitMQ: it redelivers by itself
        client.close()
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current sweep."""
        self._stop.set()

    def _run(self) -> None:
        interval_s = self.settings.reconcile_interval_s
        client = broker_client(self.settings)
        store = JobStore.from_settings(self.settings)
        assert client is not None
        while not self._stop.wait(interval_s):
            try:
                # One sweep per interval across the fleet, so that the two sweeps
                # that confirm a loss are an interval apart. Two overlapping (a
                # sweep longer than that) would at worst send a task twice.
                if store.claim_for("reconcile-sweep", interval_s * 0.9):
                    sweep(self.settings, self.app, store, client)
            except (redis.RedisError, OSError) as exc:
                logger.info("reconcile: broker away (%s); next time", exc)
            except Exception:
                logger.exception("reconcile: sweep failed; next time")
        client.close()
        store.close()
