"""Settings, read from ``BATCHGRID_*`` environment variables (or a ``.env`` file).

Example::

    BATCHGRID_BROKER_URL=redis://:secret@redis:6379/0 batchgrid worker
"""

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from batchgrid.errors import ConfigError

__all__ = ["ScheduleEntry", "Settings", "get_settings"]

_MiB = 1024 * 1024
#: URL schemes of Redis-protocol servers (job records need one); Valkey answers
#: to them too. The ones both kombu and redis-py read, and no others.
_REDIS_SCHEMES = ("redis://", "rediss://")
#: URL schemes of AMQP brokers (RabbitMQ).
_AMQP_SCHEMES = ("amqp://", "amqps://", "pyamqp://")


def _default_data_dir() -> Path:
    state_home = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(state_home) / "batchgrid"


class ScheduleEntry(BaseModel):
    """One periodic job: what to submit and how often."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["images", "tables"]
    every_s: float = Field(gt=0)
    #: The job's request, as the HTTP API takes it (``sources``/``destination``, or
    #: ``csv``/``by``/``values``...).
    params: dict[str, Any]


class Settings(BaseSettings):
    """Everything a producer, a worker or the CLI needs to know."""

    model_config = SettingsConfigDict(
        env_prefix="BATCHGRID_", env_file=".env", extra="ignore", frozen=True
    )

    #: Broker URL (``redis://``, ``rediss://``, ``amqp://``); empty: embedded Valkey.
    broker_url: str | None = None
    #: Where job records and task results live; defaults to the broker URL when it is
    #: a Redis URL. Must be Redis-protocol.
    result_backend_url: str | None = None
    #: Embedded Valkey keeps its append-only file here: queued work survives restarts.
    data_dir: Path = Field(default_factory=_default_data_dir)
    #: Inputs and outputs must lie under one of these (paths or fsspec URL prefixes).
    #: Comma-separated in the environment. Default: the current directory.
    storage_roots: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [os.getcwd()]
    )

    images_queue: str = "images"
    tables_queue: str = "tables"
    #: Pool processes per worker; empty means one per CPU core.
    concurrency: int | None = Field(default=None, ge=1)
    #: A child process is replaced after this many tasks, bounding slow leaks.
    max_tasks_per_child: int | None = Field(default=1000, ge=1)

    #: A task gets SoftTimeLimitExceeded after this long, to record what it did.
    soft_time_limit_s: int = Field(default=300, ge=1)
    #: A task's process is killed after this long; Kubernetes grace periods follow it.
    hard_time_limit_s: int = Field(default=360, ge=1)
    #: Redis redelivers a task not acknowledged in this time. A killed worker's tasks
    #: come back only after it, so keep it short, but above the hard time limit or a
    #: long task runs twice.
    visibility_timeout_s: int = Field(default=900, ge=1)
    #: On SIGTERM (a scale-in, a node drain) a worker stops taking tasks. With 0 it
    #: waits for its running tasks, as long as the hard time limit; above 0 it waits
    #: this long (Celery sleeps it all out whenever a task is running), then stops
    #: the tasks still running and hands their messages back to the queue.
    soft_shutdown_timeout_s: int = Field(default=0, ge=0)
    #: Workers look this often for running jobs whose tasks Redis has lost (one
    #: worker of the fleet at a time); 0 turns the sweep off.
    reconcile_interval_s: float = Field(default=30.0, ge=0)
    #: A job without progress for this long has its tasks looked for: those with
    #: no outcome whose message is neither queued nor held are sent again.
    reconcile_after_s: float = Field(default=60.0, gt=0)
    #: Task results (chord bookkeeping) expire after this long.
    result_expires_s: int = Field(default=24 * 3600, ge=60)
    #: Job records and per-item outcomes expire after this long.
    job_ttl_s: int = Field(default=7 * 24 * 3600, ge=60)
    #: Times a task is retried after an infrastructure error (storage, broker).
    max_retries: int = Field(default=3, ge=0)

    #: Bytes of CSV per range task. Measured by ``make bench`` on 1.07 GB: 16 MiB
    #: ranges took 3.02 s and 253 MB per pool process, 64 MiB 3.20 s and 332 MB. A
    #: 16 MiB range is ~60 ms of work, 15x the ~4 ms a Celery task costs.
    chunk_bytes: int = Field(default=16 * _MiB, ge=1)
    #: A job planned into more tasks than this is refused (raise chunk_bytes).
    max_tasks_per_job: int = Field(default=100_000, ge=1)
    #: Bytes of image files per task; many small images share one task.
    image_batch_bytes: int = Field(default=8 * _MiB, ge=1)
    #: At most this many images per task, which also keeps messages small.
    image_batch_max_items: int = Field(default=32, ge=1)
    #: Images with more pixels than this are refused as possible decompression bombs.
    max_image_pixels: int = Field(default=100_000_000, ge=1)
    #: Image files larger than this are refused before they are read into memory.
    max_image_bytes: int = Field(default=512 * _MiB, ge=1)
    jpeg_quality: int = Field(default=90, ge=1, le=100)
    #: Memory one task may allocate on top of what its pool process holds once
    #: started. Past it the allocation fails and the item fails as
    #: ``out_of_memory``, instead of the kernel killing the worker. 0: no limit.
    max_task_memory_bytes: int = Field(default=2048 * _MiB, ge=0)
    #: A CSV row whose group-by field is longer than this is skipped as
    #: malformed (counted and sampled), as Python's csv module refuses fields
    #: over 128 KiB: a key that size is a quoting error, and would bloat results.
    max_csv_field_bytes: int = Field(default=128 * 1024, ge=1)

    #: The worker touches this file while its event loop runs: a liveness probe that
    #: costs nothing (no Python start, no broker round trip). Empty: no file.
    heartbeat_file: Path | None = None
    heartbeat_interval_s: float = Field(default=10.0, gt=0)

    #: Bind address and port of ``batchgrid serve`` (the producer's HTTP API).
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    #: When set, every API route but the health checks needs ``Authorization: Bearer``
    #: with this token. Mount it from a Secret.
    api_token: SecretStr | None = None
    #: Requests with a larger body are refused with 413.
    api_max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    #: The CLI talks to this producer over HTTP instead of to the broker.
    api_url: str | None = None
    #: Periodic jobs run by ``batchgrid beat`` (a JSON list in the environment).
    schedule: list[ScheduleEntry] = Field(default_factory=list)
    #: Beat's lock in Redis expires after this long, so a standby beat takes over
    #: when the active one dies; only one beat fires at a time.
    beat_lock_timeout_s: int = Field(default=60, ge=5)

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    #: One JSON object per log line, for log collectors.
    log_json: bool = False
    #: Send Celery task events (needed by celery-exporter and Flower).
    task_events: bool = False
    #: Port of a worker's Prometheus ``/metrics``; 0 turns it off. Local workers that
    #: the CLI starts serve none unless this is set, then one port each from it up.
    metrics_port: int = Field(default=9809, ge=0, le=65535)
    #: Bind address of a worker's ``/metrics``; ``0.0.0.0`` in a container.
    metrics_host: str = "127.0.0.1"
    #: Pool processes write their samples here, in a folder per worker that the
    #: worker wipes when it starts. Default: ``metrics`` under the data directory.
    metrics_dir: Path | None = None

    @field_validator("storage_roots", mode="before")
    @classmethod
    def _split_roots(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("storage_roots")
    @classmethod
    def _absolute_roots(cls, roots: list[str]) -> list[str]:
        # Resolved once, so a later chdir cannot move them.
        absolute = [root if "://" in root else os.path.abspath(root) for root in roots]
        if any(root.rstrip("/") in ("", "file:") for root in absolute):
            raise ConfigError(
                "BATCHGRID_STORAGE_ROOTS includes '/', which would expose the whole "
                "filesystem; name the folders that hold the data"
            )
        return absolute

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator(
        "broker_url", "result_backend_url", "api_url", "api_token", mode="before"
    )
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check_limits(self) -> "Settings":
        if not self.soft_time_limit_s < self.hard_time_limit_s:
            raise ConfigError(
                f"BATCHGRID_SOFT_TIME_LIMIT_S ({self.soft_time_limit_s}) must be below "
                f"BATCHGRID_HARD_TIME_LIMIT_S ({self.hard_time_limit_s})"
            )
        if not self.hard_time_limit_s < self.visibility_timeout_s:
            raise ConfigError(
                "BATCHGRID_VISIBILITY_TIMEOUT_S "
                f"({self.visibility_timeout_s}) must exceed "
                f"BATCHGRID_HARD_TIME_LIMIT_S ({self.hard_time_limit_s}), or Redis "
                "redelivers tasks that are still running"
            )
        broker = self.broker_url
        if broker and not broker.startswith((*_REDIS_SCHEMES, *_AMQP_SCHEMES)):
            raise ConfigError(
                f"BATCHGRID_BROKER_URL has an unsupported scheme "
                f"{broker.split('://')[0]}://; use redis://, rediss:// or amqp://"
            )
        backend = self.result_backend_url
        if backend and not backend.startswith(_REDIS_SCHEMES):
            raise ConfigError(
                f"BATCHGRID_RESULT_BACKEND_URL must be a Redis URL "
                f"({', '.join(_REDIS_SCHEMES)}), got {backend.split('://')[0]}://"
            )
        names = [entry.name for entry in self.schedule]
        if len(names) != len(set(names)):
            raise ConfigError(
                "BATCHGRID_SCHEDULE names an entry twice; names must differ"
            )
        if not self.storage_roots:
            raise ConfigError(
                "BATCHGRID_STORAGE_ROOTS is empty; name at least one root"
            )
        return self

    @property
    def job_store_url(self) -> str | None:
        """The Redis URL holding job records: the result backend, else the broker."""
        if self.result_backend_url:
            return self.result_backend_url
        if self.broker_url and self.broker_url.startswith(_REDIS_SCHEMES):
            return self.broker_url
        return None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once from the environment."""
    return Settings()
