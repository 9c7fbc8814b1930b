"""Per-task resource limits of pool processes, so one input cannot take a worker down.

A pool process runs one task at a time, so a limit on the process is a limit on
the task. Memory is bounded with ``RLIMIT_DATA`` set above what the process holds
once it has started: past it, allocations fail with MemoryError, which the task
reports for its item, instead of the kernel's OOM killer ending the worker.
"""

import logging
import resource
from pathlib import Path

__all__ = ["limit_task_memory"]

logger = logging.getLogger(__name__)


def _data_bytes() -> int | None:
    """This process's data size (heap and private mappings), from /proc on Linux."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    return None


def limit_task_memory(extra_bytes: int) -> int | None:
    """Let this process allocate ``extra_bytes`` more than it holds now, no more.

    Returns the limit set, or None when there is none (0 given, or no /proc).
    Call it once the process has warmed up: what it holds then is not counted.
    """
    if extra_bytes <= 0:
        return None
    held = _data_bytes()
    if held is None:
        logger.warning("no /proc/self/status: tasks run without a memory limit")
        return None
    limit = held + extra_bytes
    _, hard = resource.getrlimit(resource.RLIMIT_DATA)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    return limit
