"""The Celery application, configured for at-least-once delivery with JSON only.

Producers build one with :func:`create_app`; worker processes import
``batchgrid.worker``, which also registers the tasks.
"""

from typing import Any

from celery import Celery
from kombu import Exchange, Queue

from batchgrid.errors import ConfigError
from batchgrid.settings import Settings

__all__ = ["TASK_NAMES", "create_app"]

#: Task names are the wire contract between producers and workers.
TASK_NAMES = {
    "convert_images": "batchgrid.images.convert",
    "finish_images": "batchgrid.images.finish",
    "aggregate_range": "batchgrid.tables.aggregate_range",
    "finish_table": "batchgrid.tables.finish",
    "fail_job": "batchgrid.jobs.fail",
    "submit_scheduled": "batchgrid.jobs.submit_scheduled",
}


def _celery_config(settings: Settings) -> dict[str, Any]:
    transport = {
        # A task not acknowledged within this time is delivered again (Redis only).
        "visibility_timeout": settings.visibility_timeout_s,
    }
    queues = (
        Queue(
            settings.images_queue,
            Exchange(settings.images_queue),
            settings.images_queue,
        ),
        Queue(
            settings.tables_queue,
            Exchange(settings.tables_queue),
            settings.tables_queue,
        ),
    )
    return {
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
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "task_soft_time_limit": settings.soft_time_limit_s,
        "task_time_limit": settings.hard_time_limit_s,
        "result_expires": settings.result_expires_s,
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
