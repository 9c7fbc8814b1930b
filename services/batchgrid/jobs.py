"""Job records in Redis: state, totals, per-item outcomes and the final result.

Every write is idempotent: item outcomes are stored in a hash keyed by item
(image path or range index), and progress is read as the hash's size, so a
task delivered twice neither double-counts nor loses anything.

Keys (``{id}`` is the job id), all expiring after ``job_ttl_s``::

    batchgrid:job:{id}          hash  kind, state, total, timings, error
    batchgrid:job:{id}:items    hash  item -> outcome JSON
    batchgrid:job:{id}:failed   set   items whose outcome is an error
    batchgrid:job:{id}:result   str   final result JSON
    batchgrid:job:{id}:attempts hash  deliveries per task (finds poison inputs)
    batchgrid:job:{id}:tasks    hash  task id -> what to send it again with
    batchgrid:jobs              zset  job ids by creation time
"""

import json
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from batchgrid.errors import BrokerUnavailableError, ConfigError, JobNotFoundError
from batchgrid.settings import Settings

__all__ = ["TERMINAL_STATES", "JobRecord", "JobState", "JobStore"]

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})

_PREFIX = "batchgrid:job:"
_INDEX = "batchgrid:jobs"


@dataclass(frozen=True)
class JobRecord:
    """What is known about one job; ``done`` counts items with an outcome."""

    id: str
    kind: str
    state: str
    total: int
    done: int
    failed: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    error: str | None
    options: dict[str, Any]

    @property
    def finished(self) -> bool:
        return self.state in TERMINAL_STATES

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "progress": {"done": self.done, "failed": self.failed, "total": self.total},
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "error": self.error,
            "options": self.options,
        }


def _tries(outage_s: float) -> int:
    """Retries of 0.1, 0.2, 0.4 ... 2, 2 s that together wait at least ``outage_s``."""
    tries, waited, pause = 0, 0.0, 0.1
    while waited < outage_s:
        waited += pause
        pause = min(2.0, pause * 2)
        tries += 1
    return tries


def _float_or_none(value: str | None) -> float | None:
    return float(value) if value else None


class JobStore:
    """Reads and writes job records on a Redis-protocol server."""

    def __init__(self, url: str, *, ttl_s: int, outage_s: float = 0.0) -> None:
        """``outage_s``: how long calls keep retrying while the server is away
        (a restart, a failover); 0 keeps redis-py's few quick retries."""
        options: dict[str, Any] = {}
        if outage_s > 0:
            options = {
                "retry": Retry(ExponentialBackoff(cap=2, base=0.1), _tries(outage_s)),
                "socket_connect_timeout": 5,
                "socket_timeout": 30,
            }
        self._redis: redis.Redis = redis.Redis.from_url(
            url, decode_responses=True, health_check_interval=30, **options
        )
        self._ttl_s = ttl_s
        self._mark_running = self._redis.register_script(_MARK_RUNNING)
        self._finish = self._redis.register_script(_FINISH)

    @classmethod
    def from_settings(cls, settings: Settings, *, outage_s: float = 0.0) -> "JobStore":
        """The store the settings name; ConfigError if they name none."""
        if not settings.job_store_url:
            raise ConfigError(
                "job records need a Redis-protocol server: set "
                "BATCHGRID_RESULT_BACKEND_URL when the broker is not Redis"
            )
        return cls(settings.job_store_url, ttl_s=settings.job_ttl_s, outage_s=outage_s)

    def ping(self) -> None:
        """Raise BrokerUnavailableError unless the server answers."""
        try:
            self._redis.ping()
        except redis.RedisError as exc:
            raise BrokerUnavailableError(
                f"the job store does not answer ({exc}); check that Redis is up and "
                "BATCHGRID_RESULT_BACKEND_URL / BATCHGRID_BROKER_URL point at it"
            ) from exc

    def create(self, kind: str, *, total: int, options: Mapping[str, Any]) -> str:
        """Record a new queued job and return its id."""
        job_id = uuid.uuid4().hex
        now = time.time()
        key = _PREFIX + job_id
        with self._redis.pipeline() as pipe:
            pipe.hset(
                key,
                mapping={
                    "kind": kind,
                    "state": "queued",
                    "total": total,
                    "created_at": now,
                    "options": json.dumps(options),
                },
            )
            pipe.expire(key, self._ttl_s)
            pipe.zadd(_INDEX, {job_id: now})
            pipe.zremrangebyscore(_INDEX, "-inf", now - self._ttl_s)
            pipe.execute()
        return job_id

    def record(self, job_id: str, outcomes: Mapping[str, Mapping[str, Any]]) -> bool:
        """Store item outcomes; an outcome with an ``error`` key counts as failed.

        Returns True when every item of the job has an outcome now.
        """
        key = _PREFIX + job_id
        failed = [item for item, outcome in outcomes.items() if "error" in outcome]
        succeeded = [
            item for item, outcome in outcomes.items() if "error" not in outcome
        ]
        with self._redis.pipeline() as pipe:
            if outcomes:
                pipe.hset(
                    key + ":items",
                    mapping={item: json.dumps(o) for item, o in outcomes.items()},
                )
            if failed:
                pipe.sadd(key + ":failed", *failed)
            if succeeded:
                pipe.srem(key + ":failed", *succeeded)
            self._mark_running(keys=[key], args=[time.time()], client=pipe)
            for suffix in (":items", ":failed"):
                pipe.expire(key + suffix, self._ttl_s)
            pipe.hlen(key + ":items")
            pipe.hget(key, "total")
            *_, done, total = pipe.execute()
        return total is not None and int(done) >= int(total)

    def recorded(self, job_id: str, items: Sequence[str]) -> set[str]:
        """Those of ``items`` that have an outcome already."""
        if not items:
            return set()
        found = self._redis.hmget(_PREFIX + job_id + ":items", list(items))
        return {item for item, value in zip(items, found, strict=True) if value}

    def finish(
        self,
        job_id: str,
        state: JobState,
        *,
        result: Mapping[str, Any] | None = None,
        error: str | None = None,
    ) -> bool:
        """Move a job to a terminal state once; False if it already had one."""
        key = _PREFIX + job_id
        fields = {"finished_at": time.time(), "error": error or ""}
        payload = "" if result is None else json.dumps(result)
        keys = [key, *(key + suffix for suffix in _SUFFIXES)]
        args: list[str | int] = [state, json.dumps(fields), payload, self._ttl_s]
        return bool(self._finish(keys=keys, args=args))

    def state(self, job_id: str) -> str | None:
        """The job's state alone (cheap), or None if unknown."""
        value = self._redis.hget(_PREFIX + job_id, "state")
        return None if value is None else str(value)

    def count_attempt(self, job_id: str, task_id: str, retries: int) -> int:
        """Count one more delivery of a task's ``retries``-th try; returns the count.

        Celery's own retries are new tries, not redeliveries: only a message
        delivered again after its worker died counts more than once.
        """
        key = _PREFIX + job_id + ":attempts"
        with self._redis.pipeline() as pipe:
            pipe.hincrby(key, f"{task_id}:{retries}", 1)
            pipe.expire(key, self._ttl_s)
            count, _ = pipe.execute()
        return int(count)

    def claim(self, token: str) -> bool:
        """True the first time ``token`` is claimed (within the job TTL), else False."""
        return self.claim_for(token, self._ttl_s)

    def set_tasks(self, job_id: str, tasks: Mapping[str, Mapping[str, Any]]) -> None:
        """Remember the job's tasks by id: a cancel revokes them, and the
        reconciler sends again those that Redis lost (see batchgrid.reconcile)."""
        key = _PREFIX + job_id + ":tasks"
        with self._redis.pipeline() as pipe:
            pipe.delete(key)
            if tasks:
                pipe.hset(key, mapping={i: json.dumps(t) for i, t in tasks.items()})
            pipe.expire(key, self._ttl_s)
            pipe.execute()

    def tasks(self, job_id: str) -> dict[str, dict[str, Any]]:
        """The job's tasks as :meth:`set_tasks` recorded them, by task id."""
        raw = self._redis.hgetall(_PREFIX + job_id + ":tasks")
        return {str(task_id): json.loads(value) for task_id, value in raw.items()}

    def mark_published(self, job_id: str) -> None:
        """Note that every task of the job has been sent (the reconciler waits
        for it: a job still being published has tasks not sent yet)."""
        self._redis.eval(_MARK_PUBLISHED, 1, _PREFIX + job_id, time.time())

    def stalled(self, *, idle_s: float, limit: int) -> list[str]:
        """Unfinished, fully published jobs among the ``limit`` most recent
        without a recorded outcome for ``idle_s``."""
        ids = [str(job_id) for job_id in self._redis.zrevrange(_INDEX, 0, limit - 1)]
        with self._redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(_PREFIX + job_id, ["state", "published_at", "updated_at"])
            rows = pipe.execute()
        now = time.time()
        stalled = []
        for job_id, (state, published, updated) in zip(ids, rows, strict=True):
            if state not in ("queued", "running") or not published:
                continue
            if now - max(float(published), float(updated or 0)) >= idle_s:
                stalled.append(job_id)
        return stalled

    def claim_for(self, token: str, ttl_s: float) -> bool:
        """True at most once per ``ttl_s`` for ``token``."""
        return bool(
            self._redis.set(
                f"batchgrid:claim:{token}", 1, nx=True, px=int(ttl_s * 1000)
            )
        )

    def cancel(self, job_id: str) -> bool:
        """Mark the job cancelled; tasks still queued then skip their work."""
        self.get(job_id)
        return self.finish(job_id, "cancelled", error="cancelled by request")

    def get(self, job_id: str) -> JobRecord:
        """The job's record; JobNotFoundError if unknown or expired."""
        key = _PREFIX + job_id
        with self._redis.pipeline() as pipe:
            pipe.hgetall(key)
            pipe.hlen(key + ":items")
            pipe.scard(key + ":failed")
            raw, done, failed = pipe.execute()
        if not raw:
            raise JobNotFoundError(
                f"no job {job_id!r}: it never existed or expired after the job TTL"
            )
        return JobRecord(
            id=job_id,
            kind=raw["kind"],
            state=raw["state"],
            total=int(raw["total"]),
            done=int(done),
            failed=int(failed),
            created_at=float(raw["created_at"]),
            started_at=_float_or_none(raw.get("started_at")),
            finished_at=_float_or_none(raw.get("finished_at")),
            error=raw.get("error") or None,
            options=json.loads(raw.get("options") or "{}"),
        )

    def items(self, job_id: str) -> dict[str, dict[str, Any]]:
        """Every recorded item outcome of the job, by item."""
        raw = self._redis.hgetall(_PREFIX + job_id + ":items")
        return {str(item): json.loads(value) for item, value in raw.items()}

    def result(self, job_id: str) -> dict[str, Any] | None:
        """The job's final result, or None while it has none."""
        raw = self._redis.get(_PREFIX + job_id + ":result")
        if raw is None:
            return None
        loaded: dict[str, Any] = json.loads(raw)
        return loaded

    def recent(self, *, limit: int = 20, offset: int = 0) -> list[str]:
        """Ids of the most recent jobs, newest first."""
        ids = self._redis.zrevrange(_INDEX, offset, offset + limit - 1)
        return [str(job_id) for job_id in ids]

    def count_unfinished(self, *, limit: int) -> dict[tuple[str, str], int]:
        """Queued and running jobs among the ``limit`` most recent, by (kind, state)."""
        ids = self._redis.zrevrange(_INDEX, 0, limit - 1)
        with self._redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hmget(_PREFIX + str(job_id), "kind", "state")
            rows = pipe.execute() if ids else []
        counts: dict[tuple[str, str], int] = {}
        for kind, state in rows:
            if kind and state in ("queued", "running"):
                counts[(kind, state)] = counts.get((kind, state), 0) + 1
        return counts

    def close(self) -> None:
        self._redis.close()


#: queued -> running with its start time, atomically, only if still queued (never
#: recreating an expired job's record).
_MARK_RUNNING = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'queued' then
  redis.call('HSET', KEYS[1], 'state', 'running', 'started_at', ARGV[1])
end
if state then
  redis.call('HSET', KEYS[1], 'updated_at', ARGV[1])
end
return 1
"""

#: Every task of a job sent: stamp it (never recreating an expired record).
_MARK_PUBLISHED = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'published_at', ARGV[1])
end
return 1
"""

#: Keys of a job beside its record hash, in the order _FINISH takes them.
_SUFFIXES = (":result", ":items", ":failed", ":attempts", ":tasks")

#: Set a terminal state (and the result) once, atomically: a late or duplicate
#: callback cannot overwrite it. Every key of the job then expires together.
_FINISH = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state or state == 'succeeded' or state == 'failed' or state == 'cancelled' then
  return 0
end
redis.call('HSET', KEYS[1], 'state', ARGV[1])
local fields = cjson.decode(ARGV[2])
for name, value in pairs(fields) do
  redis.call('HSET', KEYS[1], name, tostring(value))
end
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[2], ARGV[3])
end
for i = 1, #KEYS do
  redis.call('EXPIRE', KEYS[i], ARGV[4])
end
return 1
"""
