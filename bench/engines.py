"""Measurements that need a process of their own, run as ``python -m bench.engines``.

A fresh process gives each engine its own thread settings (``POLARS_MAX_THREADS``
is read when polars is imported) and its own peak memory (``ru_maxrss``). Each
command prints one JSON object on its last line.

Commands::

    table  --engine pandas|duckdb|polars --csv FILE --by COL --value COL --threads N
    plan   --csv FILE --chunk-bytes N
    parser --csv FILE --start BYTE --end BYTE --by COL --value COL
    convert --folder DIR
"""

import argparse
import io
import json
import os
import time
from collections.abc import Callable
from typing import Any

__all__ = ["main"]

#: A group's answer: count, sum, min and max of the value column.
Groups = dict[str, list[float]]

#: Timed repeats of each parser on one range, inside one process.
PARSER_REPEATS = 3


def _peak_rss_bytes() -> int:
    """This process's peak RSS (``VmHWM``; ``ru_maxrss`` would carry the parent's
    peak over ``fork`` and ``exec``)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _pandas(csv: str, by: str, value: str, threads: int) -> Groups:
    import pandas as pd

    frame = pd.read_csv(csv, usecols=[by, value], dtype={by: "str", value: "float64"})
    grouped = frame.groupby(by, sort=False)[value].agg(["count", "sum", "min", "max"])
    return {
        str(key): [int(row["count"]), row["sum"], row["min"], row["max"]]
        for key, row in grouped.iterrows()
    }


def _duckdb(csv: str, by: str, value: str, threads: int) -> Groups:
    import duckdb

    connection = duckdb.connect()
    connection.execute(f"SET threads={int(threads)}")
    rows = connection.execute(
        f"""
        SELECT "{by}", count("{value}"), sum("{value}"), min("{value}"),
               max("{value}")
        FROM read_csv(?, header = true,
                      types = {{'{by}': 'VARCHAR', '{value}': 'DOUBLE'}})
        GROUP BY "{by}"
        """,
        [csv],
    ).fetchall()
    return {str(key): [int(n), total, low, high] for key, n, total, low, high in rows}


def _polars(csv: str, by: str, value: str, threads: int) -> Groups:
    import polars as pl

    column = pl.col(value)
    frame = (
        pl.scan_csv(csv, schema_overrides={by: pl.String, value: pl.Float64})
        .group_by(by)
        .agg(
            column.count().alias("count"),
            column.sum().alias("sum"),
            column.min().alias("min"),
            column.max().alias("max"),
        )
        .collect()
    )
    return {
        str(row[by]): [int(row["count"]), row["sum"], row["min"], row["max"]]
        for row in frame.iter_rows(named=True)
    }


ENGINES: dict[str, Callable[[str, str, str, int], Groups]] = {
    "pandas": _pandas,
    "duckdb": _duckdb,
    "polars": _polars,
}


def table(args: argparse.Namespace) -> dict[str, Any]:
    """One engine's group-by over the whole file: time, peak memory and answer."""
    engine = ENGINES[args.engine]
    baseline = _peak_rss_bytes()
    started = time.perf_counter()
    groups = engine(args.csv, args.by, args.value, args.threads)
    seconds = time.perf_counter() - started
    return {
        "engine": args.engine,
        "seconds": seconds,
        "peak_rss_bytes": _peak_rss_bytes(),
        "baseline_rss_bytes": baseline,
        "groups": groups,
    }


def plan(args: argparse.Namespace) -> dict[str, Any]:
    """The producer's planning of a tables job alone: time and peak memory.

    Then, for tuning, the same planning with 1 MiB reads, and the floor of any
    planner that must look at every byte: reading the file while ``bytes.find``
    (memchr) looks for a quote character.
    """
    from batchgrid import tables
    from batchgrid.producer import plan_table
    from batchgrid.settings import Settings

    folder = os.path.dirname(os.path.abspath(args.csv))
    settings = Settings(_env_file=None, storage_roots=[folder])  # type: ignore[call-arg]
    baseline = _peak_rss_bytes()
    started = time.perf_counter()
    planned = plan_table(
        settings,
        args.csv,
        by=[args.by],
        values=[args.value],
        chunk_bytes=args.chunk_bytes,
    )
    seconds = time.perf_counter() - started
    peak = _peak_rss_bytes()

    def plan_with(block_bytes: int) -> float:
        with open(args.csv, "rb") as handle:
            header = tables.read_header(
                handle, name=args.csv, dialect=tables.CsvDialect()
            )
            started = time.perf_counter()
            tables.plan_ranges(
                handle,
                start=header.end_offset,
                size=planned.size_bytes,
                chunk_bytes=args.chunk_bytes,
                dialect=tables.CsvDialect(),
                block_bytes=block_bytes,
            )
            return time.perf_counter() - started

    def scan_floor() -> float:
        started = time.perf_counter()
        with open(args.csv, "rb") as handle:
            while block := handle.read(1 << 20):
                if block.find(b'"') >= 0:
                    block.count(b'"')
        return time.perf_counter() - started

    found: dict[str, Any] = {
        "seconds": seconds,
        "ranges": len(planned.ranges),
        "size_bytes": planned.size_bytes,
        "peak_rss_bytes": peak,
        "baseline_rss_bytes": baseline,
    }
    if args.variants:
        found |= {
            "plan_block_bytes": tables.PLAN_BLOCK_BYTES,
            "plan_ranges_s": min(plan_with(tables.PLAN_BLOCK_BYTES) for _ in range(3)),
            "plan_ranges_1mib_s": min(plan_with(1 << 20) for _ in range(3)),
            "scan_floor_s": min(scan_floor() for _ in range(3)),
        }
    return found


def _best_of(run: Callable[[], Any]) -> tuple[list[float], Any]:
    samples, answer = [], None
    for _ in range(PARSER_REPEATS):
        started = time.perf_counter()
        answer = run()
        samples.append(time.perf_counter() - started)
    return samples, answer


def parser(args: argparse.Namespace) -> dict[str, Any]:
    """Parse and aggregate one byte range on one core, with each candidate parser."""
    import polars as pl

    from batchgrid import tables
    from batchgrid.storage import read_range

    with open(args.csv, "rb") as handle:
        header = tables.read_header(handle, name=args.csv, dialect=tables.CsvDialect())
    started = time.perf_counter()
    data = read_range(args.csv, args.start, args.end)
    read_s = time.perf_counter() - started
    names = header.names

    def pyarrow_with(block_bytes: int) -> Callable[[], int]:
        def run() -> int:
            tables.PARSE_BLOCK_BYTES = block_bytes
            partial = tables.aggregate_range(
                data,
                names=names,
                by=[args.by],
                values=[args.value],
                dialect=tables.CsvDialect(),
                quoted=False,
            )
            return int(partial["rows"])

        return run

    def polars_one_thread() -> int:
        frame = pl.read_csv(
            io.BytesIO(data),
            has_header=False,
            new_columns=names,
            columns=[names.index(args.by), names.index(args.value)],
            schema_overrides={args.by: pl.String, args.value: pl.Float64},
        )
        column = pl.col(args.value)
        grouped = frame.group_by(args.by).agg(
            pl.len().alias("rows"),
            column.count().alias("count"),
            column.sum().alias("sum"),
            column.min().alias("min"),
            column.max().alias("max"),
        )
        return int(grouped["rows"].sum())

    default_block = tables.PARSE_BLOCK_BYTES
    candidates: dict[str, Callable[[], int]] = {
        f"pyarrow, {default_block >> 20} MiB blocks (batchgrid)": pyarrow_with(
            default_block
        ),
        "pyarrow, 1 MiB blocks": pyarrow_with(1 << 20),
        "pyarrow, 4 MiB blocks": pyarrow_with(4 << 20),
        "pyarrow, 64 MiB blocks": pyarrow_with(64 << 20),
        "polars read_csv, 1 thread": polars_one_thread,
    }
    results = []
    for label, run in candidates.items():
        run()  # first call pays one-off costs, as the worker's warm-up does
        samples, rows = _best_of(run)
        results.append({"parser": label, "samples": samples, "rows": rows})
    tables.PARSE_BLOCK_BYTES = default_block
    return {
        "range_bytes": len(data),
        "read_s": read_s,
        "parsers": results,
        "peak_rss_bytes": _peak_rss_bytes(),
    }


def convert(args: argparse.Namespace) -> dict[str, Any]:
    """batchgrid's conversion of every JPEG in a folder: the best of two passes."""
    from pathlib import Path

    from batchgrid.imaging import ImageOptions, convert_to_grayscale

    paths = sorted(Path(args.folder).glob("*.jpg"))
    options = ImageOptions()

    def one_pass(selected: list[Path]) -> float:
        started = time.perf_counter()
        for path in selected:
            with path.open("rb") as handle:
                convert_to_grayscale(handle, name=path.name, options=options)
        return time.perf_counter() - started

    one_pass(paths[:3])
    return {"seconds": min(one_pass(paths) for _ in range(2)), "images": len(paths)}


def main() -> None:
    """Parse the command line, run one command, print its JSON."""
    parser_ = argparse.ArgumentParser(prog="python -m bench.engines")
    commands = parser_.add_subparsers(dest="command", required=True)
    for name in ("table", "plan", "parser"):
        command = commands.add_parser(name)
        command.add_argument("--csv", required=True)
        command.add_argument("--by", default="category")
        command.add_argument("--value", default="amount")
    commands.add_parser("convert").add_argument("--folder", required=True)
    commands.choices["table"].add_argument("--engine", choices=ENGINES, required=True)
    commands.choices["table"].add_argument("--threads", type=int, default=2)
    commands.choices["plan"].add_argument("--chunk-bytes", type=int, required=True)
    commands.choices["plan"].add_argument(
        "--variants", action="store_true", help="also time other ways to plan"
    )
    commands.choices["parser"].add_argument("--start", type=int, required=True)
    commands.choices["parser"].add_argument("--end", type=int, required=True)
    args = parser_.parse_args()
    run = {"table": table, "plan": plan, "parser": parser, "convert": convert}[
        args.command
    ]
    print(json.dumps(run(args)))


if __name__ == "__main__":
    main()
