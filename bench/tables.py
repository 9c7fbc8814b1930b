"""Tables: a generated CSV of a gigabyte or more, grouped by category, through
batchgrid's local workers, against pandas, DuckDB, polars and the naive design.

Every engine reads the same file from the page cache (it is read once before the
timings), and every answer is checked against batchgrid's: counts exactly, sums,
minima and maxima to 1e-9 relative.
"""

import json
import logging
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from batchgrid.celery_app import create_app
from batchgrid.jobs import JobRecord
from batchgrid.settings import Settings
from bench.broker import bench_worker
from bench.harness import (
    BENCH_QUEUE,
    NAIVE_TASK,
    Cluster,
    Stat,
    cluster,
    peak_rss_bytes,
    pool_children,
    quiet,
    reset_peak_rss,
    rss_bytes,
    run_json,
    wait_job,
)

__all__ = ["CsvFile", "make_csv", "run_tables"]

logger = logging.getLogger(__name__)

_GiB = 1 << 30
_MiB = 1 << 20

#: Column layout of the generated file: about 66 bytes a row, 16 M rows a GiB.
COLUMNS = ("id", "ts", "region", "category", "customer_id", "amount", "qty")
BY = "category"
VALUE = "amount"
#: Distinct categories, drawn with Zipf-like weights (the first is ~20% of rows).
CATEGORIES = 50
ZIPF_EXPONENT = 1.1
REGIONS = ("north", "south", "east", "west", "north-east", "south-west")
#: Rows generated and written at a time.
BLOCK_ROWS = 1_000_000
#: Bumped when the generated layout changes, so cached files are made again.
CSV_VERSION = 1

#: Chunk sizes tried in the sweep, beside the default.
SWEEP_CHUNK_MIB = (16, 32, 64, 128)
#: Rows per task in the naive design, as the tutorials have it.
NAIVE_CHUNK_ROWS = 10_000
#: Relative tolerance when comparing sums, minima and maxima between engines.
REL_TOL = 1e-9

_RANGE_LOG = re.compile(r"range (\d+) \((\d+) bytes, (\d+) rows\) in ([0-9.]+) s")


@dataclass(frozen=True)
class CsvFile:
    """A generated CSV file and what is known about it."""

    path: Path
    size_bytes: int
    rows: int


def make_csv(data_dir: Path, size_gib: float, *, seed: int = 7) -> CsvFile:
    """Generate (or reuse) a CSV of at least ``size_gib`` GiB under ``data_dir``."""
    path = data_dir / f"sales-{size_gib:g}gib.csv"
    meta_path = path.with_suffix(".json")
    wanted = {"version": CSV_VERSION, "size_gib": size_gib, "seed": seed}
    if meta_path.exists() and path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("params") == wanted and path.stat().st_size == meta["size_bytes"]:
            return CsvFile(path, meta["size_bytes"], meta["rows"])
    logger.info("generating %s (%.1f GiB)", path, size_gib)
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    weights = 1 / np.arange(1, CATEGORIES + 1) ** ZIPF_EXPONENT
    weights /= weights.sum()
    categories = pa.array([f"category_{i:02d}" for i in range(CATEGORIES)])
    regions = pa.array(REGIONS)
    target = int(size_gib * _GiB)
    rows = 0
    data_dir.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        handle.write((",".join(COLUMNS) + "\n").encode())
        options = pacsv.WriteOptions(include_header=False, quoting_style="none")
        while handle.tell() < target:
            n = BLOCK_ROWS
            seconds = rng.integers(0, 365 * 86400, n).astype("timedelta64[s]")
            block = pa.table(
                {
                    "id": pa.array(np.arange(rows, rows + n) + 10_000_000),
                    "ts": pa.array(np.datetime64("2024-01-01T00:00:00") + seconds),
                    "region": pa.DictionaryArray.from_arrays(
                        pa.array(rng.integers(0, len(REGIONS), n, dtype=np.int32)),
                        regions,
                    ),
                    "category": pa.DictionaryArray.from_arrays(
                        pa.array(rng.choice(CATEGORIES, n, p=weights).astype(np.int32)),
                        categories,
                    ),
                    "customer_id": pa.array(rng.integers(100_000, 1_000_000, n)),
                    "amount": pa.array(np.round(rng.lognormal(3.5, 1.0, n), 2)),
                    "qty": pa.array(rng.integers(1, 10, n)),
                }
            )
            pacsv.write_csv(block, handle, options)
            rows += n
        size = handle.tell()
    meta_path.write_text(
        json.dumps({"params": wanted, "size_bytes": size, "rows": rows})
    )
    logger.info(
        "%s: %d bytes, %d rows in %.0f s",
        path.name,
        size,
        rows,
        time.perf_counter() - started,
    )
    return CsvFile(path, size, rows)


def warm_page_cache(path: Path) -> None:
    """Read the file once so every engine starts with it in memory."""
    with path.open("rb", buffering=0) as handle:
        while handle.read(16 * _MiB):
            pass


def _groups_of(result: dict[str, Any]) -> dict[str, list[float]]:
    """batchgrid's merged result as ``{key: [count, sum, min, max]}``."""
    groups = {}
    for group in result["groups"]:
        stats = group["stats"][VALUE]
        groups[str(group["key"][0])] = [
            stats["count"],
            stats["sum"],
            stats["min"],
            stats["max"],
        ]
    return groups


def compare(reference: dict[str, list[float]], other: dict[str, list[float]]) -> str:
    """ "ok", or what differs between two answers (counts exactly, rest to 1e-9)."""
    if set(reference) != set(other):
        return f"groups differ: {sorted(set(reference) ^ set(other))[:5]}"
    for key, want in reference.items():
        have = other[key]
        if int(have[0]) != int(want[0]):
            return f"{key}: count {have[0]} != {want[0]}"
        for label, a, b in zip(("sum", "min", "max"), have[1:], want[1:], strict=True):
            if not math.isclose(float(a), float(b), rel_tol=REL_TOL):
                return f"{key}: {label} {a!r} != {b!r}"
    return "ok"


def _range_seconds(log_dir: Path, job_id: str) -> list[float]:
    """Seconds each range task of the job took, from the workers' log lines."""
    seconds = []
    for log in log_dir.glob("worker-*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if job_id in line and (match := _RANGE_LOG.search(line)):
                seconds.append(float(match.group(4)))
    return seconds


def _run_batchgrid(run: Cluster, csv: CsvFile, chunk_bytes: int) -> dict[str, Any]:
    """One tables job from planning to the merged result; its time and breakdown."""

    def once() -> tuple[float, float, JobRecord]:
        started = time.time()
        job_id = run.producer.submit_table(
            str(csv.path), by=[BY], values=[VALUE], chunk_bytes=chunk_bytes
        )
        return (started, *wait_job(run.store, job_id, started))

    started, seconds, record = quiet.run(once)
    job_id = record.id
    result = run.store.result(job_id)
    assert result is not None and record.finished_at is not None
    ranges = _range_seconds(run.workers.log_dir, job_id)
    processes = run.workers.count * (run.workers.concurrency or 1)
    run_s = record.finished_at - record.created_at
    return {
        "seconds": seconds,
        "plan_s": record.created_at - started,
        "run_s": run_s,
        "ranges": record.total,
        "range_busy_s": sum(ranges),
        "range_s_mean": sum(ranges) / len(ranges) if ranges else None,
        # Share of the processes' time spent inside range tasks once planned.
        "utilization": sum(ranges) / (processes * run_s) if ranges else None,
        "groups": _groups_of(result),
        "rows": result["rows"],
    }


def _repeat_batchgrid(
    run: Cluster, csv: CsvFile, chunk_bytes: int, repeats: int, label: str
) -> dict[str, Any]:
    runs = []
    for attempt in range(repeats):
        runs.append(_run_batchgrid(run, csv, chunk_bytes))
        logger.info(
            "%s, %d MiB chunks, repeat %d: %.2f s (plan %.2f s, %d ranges, "
            "utilization %s)",
            label,
            chunk_bytes >> 20,
            attempt + 1,
            runs[-1]["seconds"],
            runs[-1]["plan_s"],
            runs[-1]["ranges"],
            f"{runs[-1]['utilization']:.0%}" if runs[-1]["utilization"] else "n/a",
        )
    best = min(runs, key=lambda r: r["seconds"])
    return {
        "label": label,
        "chunk_mib": chunk_bytes >> 20,
        "time": Stat([r["seconds"] for r in runs]),
        "plan": Stat([r["plan_s"] for r in runs]),
        "ranges": best["ranges"],
        "range_s_mean": best["range_s_mean"],
        "utilization": best["utilization"],
        "rows": best["rows"],
        "groups": best["groups"],
    }


def _reset_worker_memory(run: Cluster) -> None:
    for main in run.worker_pids():
        for pid in (main, *pool_children(main)):
            reset_peak_rss(pid)


def _worker_memory(run: Cluster) -> dict[str, Any]:
    """Peak RSS of every pool process and of the worker main processes."""
    mains = run.worker_pids()
    return {
        "pool_peak_rss_bytes": [
            peak_rss_bytes(child) for main in mains for child in pool_children(main)
        ],
        "main_peak_rss_bytes": [peak_rss_bytes(main) for main in mains],
    }


def _naive_slices(csv: CsvFile, rows: int) -> Iterator[list[dict[str, Any]]]:
    import pandas as pd

    for chunk in pd.read_csv(csv.path, chunksize=NAIVE_CHUNK_ROWS, nrows=rows):
        yield chunk.to_dict("records")


def _run_naive(settings: Settings, csv: CsvFile, rows: int) -> dict[str, Any]:
    """The tutorial design on the first ``rows`` rows: time, message size, answer."""
    app = create_app(settings)
    started = time.perf_counter()
    pending, message_bytes = [], 0
    for records in _naive_slices(csv, rows):
        if not pending:
            message_bytes = len(json.dumps(records))
        pending.append(
            app.send_task(NAIVE_TASK, args=(records, BY, VALUE), queue=BENCH_QUEUE)
        )
    partials = [result.get(timeout=600) for result in pending]
    seconds = time.perf_counter() - started
    merged: dict[str, list[Any]] = {}
    for partial in partials:
        for key, (count, total, low, high) in partial.items():
            group = merged.setdefault(key, [0, [], math.inf, -math.inf])
            group[0] += count
            group[1].append(total)
            group[2] = min(group[2], low)
            group[3] = max(group[3], high)
    groups = {k: [g[0], math.fsum(g[1]), g[2], g[3]] for k, g in merged.items()}
    return {
        "seconds": seconds,
        "tasks": len(pending),
        "message_bytes": message_bytes,
        "groups": groups,
    }


def _pandas_slice(csv: CsvFile, rows: int) -> dict[str, list[float]]:
    import pandas as pd

    frame = pd.read_csv(csv.path, usecols=[BY, VALUE], nrows=rows)
    grouped = frame.groupby(BY)[VALUE].agg(["count", "sum", "min", "max"])
    return {
        str(key): [int(row["count"]), row["sum"], row["min"], row["max"]]
        for key, row in grouped.iterrows()
    }


def _competitor(engine: str, csv: CsvFile, threads: int) -> dict[str, Any]:
    env = {"POLARS_MAX_THREADS": str(threads)}
    return quiet.run(
        lambda: run_json(
            [
                "bench.engines",
                "table",
                "--engine",
                engine,
                "--csv",
                str(csv.path),
                "--by",
                BY,
                "--value",
                VALUE,
                "--threads",
                str(threads),
            ],
            env=env,
        )
    )


def _plan_memory(csv: CsvFile, chunk_bytes: int, *, variants: bool) -> dict[str, Any]:
    quiet.wait()
    return run_json(
        [
            "bench.engines",
            "plan",
            *(["--variants"] if variants else []),
            "--csv",
            str(csv.path),
            "--chunk-bytes",
            str(chunk_bytes),
            "--by",
            BY,
            "--value",
            VALUE,
        ]
    )


def _parser_bench(csv: CsvFile, chunk_bytes: int) -> dict[str, Any]:
    """Each parser on one default-sized range from the middle of the file."""
    from batchgrid import tables

    with csv.path.open("rb") as handle:
        header = tables.read_header(
            handle, name=str(csv.path), dialect=tables.CsvDialect()
        )
        ranges = tables.plan_ranges(
            handle,
            start=header.end_offset,
            size=min(csv.size_bytes, header.end_offset + 3 * chunk_bytes),
            chunk_bytes=chunk_bytes,
            dialect=tables.CsvDialect(),
        )
    part = ranges[1] if len(ranges) > 1 else ranges[0]
    quiet.wait()
    return run_json(
        [
            "bench.engines",
            "parser",
            "--csv",
            str(csv.path),
            "--start",
            str(part.start),
            "--end",
            str(part.end),
            "--by",
            BY,
            "--value",
            VALUE,
        ],
        env={"POLARS_MAX_THREADS": "1"},
    )


def run_tables(
    settings: Settings,
    main: CsvFile,
    big: CsvFile,
    *,
    repeats: int,
    naive_rows: int,
    data_dir: Path,
) -> dict[str, Any]:
    """Every tables measurement, in an order that keeps each one on idle cores."""
    default_chunk = settings.chunk_bytes
    queues = [settings.tables_queue]
    logs = data_dir / "logs"
    out: dict[str, Any] = {
        "file": {"bytes": main.size_bytes, "rows": main.rows, "path": main.path.name},
        "big_file": {"bytes": big.size_bytes, "rows": big.rows, "path": big.path.name},
        "default_chunk_mib": default_chunk >> 20,
        "batchgrid": [],
        "sweep": [],
        "memory": {},
    }
    for path in (main.path, big.path):
        warm_page_cache(path)

    # 2 workers x 1 process, fresh: headline runs, then their peak memory.
    with cluster(
        settings, workers=2, concurrency=1, queues=queues, log_dir=logs / "tables-2x1"
    ) as run:
        idle = [
            rss_bytes(child)
            for pid in run.worker_pids()
            for child in pool_children(pid)
        ]
        _run_batchgrid(run, main, default_chunk)  # warm-up, same file and chunks
        headline = _repeat_batchgrid(
            run, main, default_chunk, repeats, "batchgrid, 2 workers x 1 process"
        )
        out["batchgrid"].append(headline)
        out["memory"]["small"] = _worker_memory(run)
        out["memory"]["pool_idle_rss_bytes"] = idle
        headline["pool_peak_rss_bytes"] = out["memory"]["small"]["pool_peak_rss_bytes"]
        for mib in SWEEP_CHUNK_MIB:
            if mib << 20 == default_chunk:
                out["sweep"].append(headline)
                continue
            _reset_worker_memory(run)
            row = _repeat_batchgrid(run, main, mib << 20, repeats, "sweep")
            row["pool_peak_rss_bytes"] = _worker_memory(run)["pool_peak_rss_bytes"]
            out["sweep"].append(row)

    # Fresh workers again for the big file: its peak memory alone.
    with cluster(
        settings, workers=2, concurrency=1, queues=queues, log_dir=logs / "tables-big"
    ) as run:
        big_run = _run_batchgrid(run, big, default_chunk)
        logger.info("big file: %.2f s", big_run["seconds"])
        out["memory"]["big"] = _worker_memory(run)
        out["big_run"] = {k: v for k, v in big_run.items() if k != "groups"}

    with cluster(
        settings, workers=1, concurrency=2, queues=queues, log_dir=logs / "tables-1x2"
    ) as run:
        _run_batchgrid(run, main, default_chunk)
        out["batchgrid"].append(
            _repeat_batchgrid(
                run, main, default_chunk, repeats, "batchgrid, 1 worker x 2 processes"
            )
        )

    out["memory"]["producer_small"] = _plan_memory(main, default_chunk, variants=True)
    out["memory"]["producer_big"] = _plan_memory(big, default_chunk, variants=False)

    reference = min(out["batchgrid"], key=lambda r: r["time"].median)["groups"]
    for row in out["batchgrid"] + out["sweep"]:
        row["check"] = compare(reference, row["groups"])
        if row["rows"] != main.rows:
            row["check"] = f"{row['rows']} rows counted, {main.rows} written"
    if big_run["rows"] != big.rows:
        out["big_run"]["check"] = f"{big_run['rows']} rows counted, {big.rows} written"

    out["competitors"] = []
    for engine, threads, label in (
        ("pandas", 1, "pandas read_csv + groupby (1 process)"),
        ("duckdb", 2, "DuckDB, 2 threads"),
        ("polars", 2, "polars scan_csv, 2 threads"),
    ):
        runs = []
        for attempt in range(repeats):
            runs.append(_competitor(engine, main, threads))
            logger.info(
                "%s, repeat %d: %.2f s", label, attempt + 1, runs[-1]["seconds"]
            )
        out["competitors"].append(
            {
                "engine": engine,
                "label": label,
                "time": Stat([r["seconds"] for r in runs]),
                "peak_rss_bytes": max(r["peak_rss_bytes"] for r in runs),
                "check": compare(reference, runs[-1]["groups"]),
            }
        )

    naive_rows = min(naive_rows, main.rows)
    with bench_worker(settings, concurrency=2, log_path=logs / "naive.log"):
        _run_naive(settings, main, NAIVE_CHUNK_ROWS)  # warm-up: one task
        runs = []
        for attempt in range(repeats):
            runs.append(quiet.run(lambda: _run_naive(settings, main, naive_rows)))
            logger.info(
                "naive design, %d rows, repeat %d: %.2f s",
                naive_rows,
                attempt + 1,
                runs[-1]["seconds"],
            )
    scale = main.rows / naive_rows
    slice_time = Stat([r["seconds"] for r in runs])
    out["naive"] = {
        "label": f"naive: {NAIVE_CHUNK_ROWS // 1000}k-row records through the broker",
        "slice_rows": naive_rows,
        "slice_time": slice_time,
        "time": Stat([s * scale for s in slice_time.samples]),
        "tasks_in_slice": runs[-1]["tasks"],
        "message_bytes": runs[-1]["message_bytes"],
        "check": compare(_pandas_slice(main, naive_rows), runs[-1]["groups"]),
    }

    out["parser"] = _parser_bench(main, default_chunk)
    for row in out["batchgrid"] + out["sweep"]:
        row.pop("groups", None)
    return out
