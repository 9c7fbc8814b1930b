"""Periodic jobs: Celery beat with its schedule and lock kept in Redis (RedBeat).

Run exactly one ``batchgrid beat``. A second one waits on the lock and takes
over only when the first stops renewing it, so a job never fires twice per period.
"""

from typing import Any

from celery import Celery
from redbeat import RedBeatScheduler

from batchgrid.celery_app import TASK_NAMES, create_app
from batchgrid.metrics import install_publish_hook
from batchgrid.settings import Settings, get_settings

__all__ = ["HeartbeatScheduler", "beat_app", "beat_schedule", "run_beat"]

#: Beat's scheduler, by the name Celery imports it.
SCHEDULER = "batchgrid.beat:HeartbeatScheduler"


class HeartbeatScheduler(RedBeatScheduler):  # type: ignore[misc]
    """RedBeat that touches ``BATCHGRID_HEARTBEAT_FILE`` after each tick.

    A tick renews the Redis lock and sends what is due, so a fresh file means a
    beat that holds the lock and keeps time; a liveness probe reads its age. A
    standby beat waiting for the lock touches nothing.
    """

    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval_s: float = super().tick(*args, **kwargs)
        path = get_settings().heartbeat_file
        if path is not None:
            path.touch()
        return interval_s


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """The beat schedule built from ``BATCHGRID_SCHEDULE``."""
    return {
        entry.name: {
            "task": TASK_NAMES["submit_scheduled"],
            "schedule": entry.every_s,
            "kwargs": {"name": entry.name, "kind": entry.kind, "params": entry.params},
            # A run not started within its period is dropped, not piled up.
            "options": {
                "queue": settings.images_queue
                if entry.kind == "images"
                else settings.tables_queue,
                "expires": entry.every_s,
            },
        }
        for entry in settings.schedule
    }


def beat_app(settings: Settings) -> Celery:
    """A Celery app configured to run beat with RedBeat."""
    app = create_app(settings)
    install_publish_hook()  # workers measure queue wait from it
    app.conf.update(
        beat_schedule=beat_schedule(settings),
        beat_scheduler=SCHEDULER,
        redbeat_redis_url=settings.job_store_url,
        redbeat_key_prefix="batchgrid:beat:",
        redbeat_lock_timeout=settings.beat_lock_timeout_s,
        # Wake often enough to fire short test schedules on time.
        beat_max_loop_interval=min(5.0, *(e.every_s for e in settings.schedule), 5.0),
    )
    return app


def run_beat(settings: Settings) -> None:
    """Run beat in this process until SIGTERM."""
    if settings.heartbeat_file is not None:
        # Left by a beat that stopped: a probe must not take it for this one's.
        settings.heartbeat_file.unlink(missing_ok=True)
        settings.heartbeat_file.parent.mkdir(parents=True, exist_ok=True)
    app = beat_app(settings)
    app.Beat(loglevel=settings.log_level.upper(), scheduler=SCHEDULER).run()
