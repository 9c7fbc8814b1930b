"""The Celery application, configured for at-least-once delivery with JSON only.

Producers build one with :func:`create_app`; worker processes import
``batchgrid.worker``, which also registers the tasks.
"""

import ssl
from typing import Any

from celery import Celery
from kombu import Exchange, Queue
from kombu.transport import TRANSPORT_ALIASES

from batchgrid.errors import ConfigError
from batchgrid.settings import Settings

__all__ = ["TASK_NAMES", "create_app"]

# redis:// and rediss:// brokers use kombu's Redis transport with a fix for a
# server that dies under it (batchgrid.redis_transport); the URLs stay the same.
for _scheme in ("redis", "rediss"):
    TRANSPORT_ALIASES[_scheme] = "batchgrid.redis_transport:Transport"

#: Task names are the wire contract between producers and workers.
TASK_NAMES = {
    "convert_images": "batchgrid.images.convert",
    "finish_images": "batchgrid.images.finish",
    "aggregate_range": "batchgrid.tables.aggregate_range",
    "finish_table": "batchgrid.tables.finish",
    "fail_job": "batchgrid.jobs.fail",
    "submit_scheduled": "batchgrid.jobs.submit_scheduled",
}


def _restore_interval_s(settings: Settings) -> int:
    """How often a worker returns tasks whose visibility timeout passed (Redis).

    A tenth of the timeout, between 1 and 10 s: a dead worker's tasks are
    delivered again within ``visibility_timeout_s`` plus this.
    """
    return max(1, min(10, settings.visibility_timeout_s // 10))


def _tls_options(url: str | None) -> dict[str, Any] | None:
    """Certificate checks for a ``rediss://`` URL that does not choose its own
    (``?ssl_cert_reqs=...``): kombu would skip them, and Celery's Redis result
    backend refuses such a URL outright."""
    if not url or not url.startswith("rediss://") or "ssl_cert_reqs=" in url:
        return None
    return {"ssl_cert_reqs": ssl.CERT_REQUIRED}


def _celery_config(settings: Settings) -> dict[str, Any]:
    transport = {
        # A task not acknowledged within this time is delivered again (Redis only).
        "visibility_timeout": settings.visibility_timeout_s,
        # Workers look for such tasks every few seconds. kombu's default looks
        # only every 100 s (10 s, throttled tenfold), which left a dead worker's
        # tasks waiting long after the visibility timeout.
        "unacked_restore_interval": _restore_interval_s(settings),
        "unacked_restore_throttle": 1,
    }
    if (settings.broker_url or "").split("://")[0] in ("amqp", "amqps", "pyamqp"):
        # RabbitMQ confirms each message once it holds it (on disk: durable
        # queue, persistent message), so a job is never reported sent but lost.
        transport["confirm_publish"] = True
    # Durable queues and persistent messages survive a RabbitMQ restart; Redis
    # keeps them in its append-only file whatever these say.
    queues = tuple(
        Queue(name, Exchange(name, durable=True), name, durable=True)
        for name in (settings.images_queue, settings.tables_queue)
    )
    tls: dict[str, Any] = {}
    if broker_tls := _tls_options(settings.broker_url):
        tls["broker_use_ssl"] = broker_tls
    if backend_tls := _tls_options(settings.job_store_url):
        tls["redis_backend_use_ssl"] = backend_tls
    return {
        **tls,
        "broker_url": settings.broker_url,
        "result_backend": settings.job_store_url,
        # JSON only: a pickle payload on the broker would be code execution.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # At-least-once: acknowledge after the task ran, give the task back when
        # its process dies, and hold one task per process so none wait unseen.
        "task_acks_late": True,
        "task_default_delivery_mode": "persistent",
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # On a broker outage, running tasks finish: their messages come back
        # anyway (unacknowledged) and run again harmlessly. Cancelling them
        # instead stores REVOKED results, which fail the job's chord.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        # A task that ends while Redis restarts stores its result once it is
        # back, instead of failing the job's chord: 30 retries, each a random
        # wait of up to 0.1, 0.2, 0.4 ... 2 s, ride out about 30 s on average.
        "result_backend_always_retry": True,
        "result_backend_max_retries": 30,
        "result_backend_base_sleep_between_retries_ms": 100,
        "result_backend_max_sleep_between_retries_ms": 2000,
        "broker_connection_retry_on_startup": True,
        # Sending a task (a job, a retry, a callback) waits out a broker restart
        # of about 12 s (0.5, 1.5, 2.5, 3.5, 4.5 s apart) before it fails.
        "task_publish_retry_policy": {
            "max_retries": 5,
            "interval_start": 0.5,
            "interval_step": 1.0,
            "interval_max": 5.0,
        },
        "task_soft_time_limit": settings.soft_time_limit_s,
        "task_time_limit": settings.hard_time_limit_s,
        "result_expires": settings.result_expires_s,
        # SIGTERM then becomes a soft shutdown (the worker CLI maps it to SIGQUIT).
        "worker_soft_shutdown_timeout": float(settings.soft_shutdown_timeout_s),
        "worker_max_tasks_per_child": settings.max_tasks_per_child,
        "task_queues": queues,
        "task_default_queue": settings.tables_queue,
        "task_routes": {
            "batchgrid.images.*": {"queue": settings.images_queue},
            "batchgrid.tables.*": {"queue": settings.tables_queue},
            "batchgrid.jobs.submit_scheduled": {"queue": settings.tables_queue},
        },
        "worker_send_task_events": settings.task_events,
        "task_send_sent_event": settings.task_events,
        "worker_hijack_root_logger": False,
    }


def create_app(settings: Settings) -> Celery:
    """A Celery app bound to the settings' broker; the broker URL must be set."""
    if not settings.broker_url:
        raise ConfigError(
            "no broker URL: set BATCHGRID_BROKER_URL, or let the CLI start the "
            "embedded Valkey server (it does so when the URL is empty)"
        )
    if not settings.job_store_url:
        raise ConfigError(
            "job records need a Redis-protocol server: set "
            "BATCHGRID_RESULT_BACKEND_URL "
            "when the broker is not Redis"
        )
    app = Celery("batchgrid", set_as_current=False)
    app.conf.update(_celery_config(settings))
    return app
