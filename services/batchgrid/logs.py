"""Logging set-up shared by workers, the API server and the CLI."""

import logging
import sys
from typing import Any

from celery import current_task

from batchgrid.settings import Settings

__all__ = ["configure_logging"]

_TEXT_FORMAT = (
    "%(asctime)s %(levelname)-7s %(processName)-16s job=%(job_id)s task=%(task_id)s "
    "%(name)s: %(message)s"
)


def _with_task_ids(factory: Any) -> Any:
    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record: logging.LogRecord = factory(*args, **kwargs)
        task = current_task
        request = getattr(task, "request", None) if task else None
        record.task_id = getattr(request, "id", None) or "-"
        record.job_id = ((getattr(request, "kwargs", None) or {}).get("job_id")) or "-"
        return record

    return make


def configure_logging(settings: Settings) -> None:
    """Log to stderr with job and task ids on every line; JSON when asked."""
    handler = logging.StreamHandler(sys.stderr)
    if settings.log_json:
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(processName)s %(name)s %(job_id)s "
                "%(task_id)s %(message)s"
            )
        )
    else:
        handler.setFormatter(logging.Formatter(_TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    if not getattr(logging, "_batchgrid_factory", False):
        logging.setLogRecordFactory(_with_task_ids(logging.getLogRecordFactory()))
        logging._batchgrid_factory = True  # type: ignore[attr-defined]
