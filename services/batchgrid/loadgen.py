"""``batchgrid loadgen``: synthetic jobs at a steady rate, for autoscaling demos.

It makes its own inputs under the first storage root, submits jobs (to the
broker, or to a producer with ``--api``), waits for them and reports latency.
"""

import logging
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from PIL import Image

from batchgrid.jobs import JobRecord
from batchgrid.schemas import ImagesRequest, TablesRequest

__all__ = ["LoadReport", "Submitter", "make_request_factory", "run_load"]

logger = logging.getLogger(__name__)

#: Images per synthetic images job, and their size (about 0.5 MP each).
LOAD_IMAGES = 8
LOAD_IMAGE_SIZE = (800, 600)
#: Rows of the synthetic CSV (about 4 MB).
LOAD_ROWS = 200_000
#: A job that has not finished this long after the last submission is reported late.
DRAIN_TIMEOUT_S = 600.0


class Submitter(Protocol):
    def submit(self, request: ImagesRequest | TablesRequest) -> str: ...

    def get(self, job_id: str) -> JobRecord: ...


@dataclass(frozen=True)
class LoadReport:
    """What was submitted and how long the jobs took, submit to finish."""

    submitted: int
    succeeded: int
    failed: int
    unfinished: int
    p50_s: float | None
    p95_s: float | None
    elapsed_s: float


def _make_images(folder: Path, rng: random.Random) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(LOAD_IMAGES):
        path = folder / f"load-{index}.jpg"
        if path.exists():
            continue
        image = Image.effect_noise(LOAD_IMAGE_SIZE, 40 + index).convert("RGB")
        tint = Image.new("RGB", LOAD_IMAGE_SIZE, (rng.randrange(256), 120, 60))
        Image.blend(image, tint, 0.5).save(path, quality=90)


def _make_csv(path: Path, rng: random.Random) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    regions = [f"r{n:02d}" for n in range(20)]
    weights = [1 / (n + 1) for n in range(20)]
    with path.open("w") as handle:
        handle.write("region,amount\n")
        for region in rng.choices(regions, weights, k=LOAD_ROWS):
            handle.write(f"{region},{rng.uniform(0, 1000):.2f}\n")


def make_request_factory(
    root: Path, kind: str
) -> Callable[[int], ImagesRequest | TablesRequest]:
    """Create the inputs once; return a function giving the n-th job's request."""
    rng = random.Random(42)
    base = root / "loadgen"
    if kind == "images":
        _make_images(base / "images", rng)

        def images(n: int) -> ImagesRequest | TablesRequest:
            destination = str(base / "out" / f"{int(time.time())}-{n}")
            return ImagesRequest(
                sources=[str(base / "images")], destination=destination
            )

        return images
    _make_csv(base / "sales.csv", rng)

    def table(n: int) -> ImagesRequest | TablesRequest:
        return TablesRequest(
            csv=str(base / "sales.csv"),
            by=["region"],
            values=["amount"],
            chunk_bytes=1 << 20,
        )

    return table


def run_load(
    submitter: Submitter,
    request_for: Callable[[int], ImagesRequest | TablesRequest],
    *,
    rate_per_s: float,
    duration_s: float,
    burst: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> LoadReport:
    """Submit ``rate * duration`` jobs (evenly spaced, or all at once), then wait."""
    count = max(1, round(rate_per_s * duration_s))
    started = time.monotonic()
    job_ids: list[str] = []
    for n in range(count):
        if not burst:
            delay = started + n / rate_per_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        job_ids.append(submitter.submit(request_for(n)))
        if on_progress:
            on_progress(len(job_ids), 0)
    logger.info("submitted %d jobs in %.1f s", count, time.monotonic() - started)

    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    records: dict[str, JobRecord] = {}
    while len(records) < count and time.monotonic() < deadline:
        for job_id in job_ids:
            if job_id not in records and (record := submitter.get(job_id)).finished:
                records[job_id] = record
        if on_progress:
            on_progress(count, len(records))
        if len(records) < count:
            time.sleep(0.2)

    durations = sorted(
        r.finished_at - r.created_at for r in records.values() if r.finished_at
    )
    return LoadReport(
        submitted=count,
        succeeded=sum(r.state == "succeeded" for r in records.values()),
        failed=sum(r.state != "succeeded" for r in records.values()),
        unfinished=count - len(records),
        p50_s=statistics.median(durations) if durations else None,
        p95_s=_percentile(durations, 0.95),
        elapsed_s=time.monotonic() - started,
    )


def _percentile(ordered: list[float], fraction: float) -> float | None:
    if not ordered:
        return None
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=100, method="inclusive")[
        round(fraction * 100) - 1
    ]
