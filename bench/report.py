"""Turn the measurements into ``RESULTS.md`` (targets first) and ``ratios.png``.

Works on the JSON-able results (``results.json``), so a report can be rebuilt
without measuring again: ``python -m bench.report bench/results/results.json``.
"""

import json
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Target", "markdown", "targets", "write", "write_chart"]

logger = logging.getLogger(__name__)

_MB = 1e6
#: The sign after a ratio (a constant, so the source stays plain ASCII).
TIMES = "\N{MULTIPLICATION SIGN}"
#: A memory peak counts as flat while the bigger file's stays within this factor.
FLAT_FACTOR = 1.10


@dataclass(frozen=True)
class Target:
    """One goal of the issue: what was measured against what was wanted."""

    name: str
    measured: float
    goal: float
    #: "min": the measurement must be at least the goal; "max": at most.
    kind: str
    unit: str
    #: Plotted in the chart of speed ratios.
    speed: bool = False

    @property
    def passed(self) -> bool:
        if math.isnan(self.measured):
            return False
        if self.kind == "min":
            return self.measured >= self.goal
        return self.measured <= self.goal

    @property
    def margin(self) -> str:
        """How far from the goal, in the direction that matters, as a percentage."""
        if math.isnan(self.measured) or self.goal == 0:
            return "n/a"
        return f"{(self.measured / self.goal - 1) * 100:+.0f}%"


def _median(stat: dict[str, Any]) -> float:
    return float(stat["median"])


def _best_batchgrid(tables: dict[str, Any]) -> dict[str, Any]:
    best: dict[str, Any] = min(tables["batchgrid"], key=lambda r: _median(r["time"]))
    return best


def _competitor(tables: dict[str, Any], engine: str) -> dict[str, Any]:
    found: dict[str, Any] = next(
        row for row in tables["competitors"] if row["engine"] == engine
    )
    return found


def targets(results: dict[str, Any]) -> list[Target]:
    """Every target of the issue that this run measured."""
    found: list[Target] = []
    for name, row in results.get("images_per_core", {}).items():
        found.append(
            Target(
                f"Images {name}, per core: batchgrid vs naive",
                row["speedup_median"],
                1.35,
                "min",
                TIMES,
                speed=True,
            )
        )
        found.append(
            Target(
                f"Images {name}: PSNR of the output vs naive (worst image)",
                row["psnr_output_db_min"],
                50.0,
                "min",
                "dB",
            )
        )
    e2e = results.get("images_e2e")
    if e2e:
        for run in e2e["runs"]:
            if run["set"] == "2MP":
                found.append(
                    Target(
                        f"Images 2MP end to end, {run['workers']} worker(s): overhead"
                        " over pure conversion",
                        100 * run["overhead_median"],
                        5.0,
                        "max",
                        "%",
                    )
                )
        for name, scaling in e2e["scaling"].items():
            found.append(
                Target(
                    f"Images {name} end to end: 2 workers vs 1",
                    scaling["median"],
                    1.8,
                    "min",
                    TIMES,
                    speed=True,
                )
            )
    tables = results.get("tables")
    if tables:
        ours = _median(_best_batchgrid(tables)["time"])
        duckdb = _median(_competitor(tables, "duckdb")["time"])
        polars = _median(_competitor(tables, "polars")["time"])
        naive = _median(tables["naive"]["time"])
        gb = tables["file"]["bytes"] / 1e9
        found += [
            Target(
                f"Tables {gb:.1f} GB: DuckDB (2 threads) time / batchgrid time",
                duckdb / ours,
                1.0,
                "min",
                TIMES,
                speed=True,
            ),
            Target(
                f"Tables {gb:.1f} GB: naive design time / batchgrid time",
                naive / ours,
                50.0,
                "min",
                TIMES,
                speed=True,
            ),
            Target(
                f"Tables {gb:.1f} GB: polars (2 threads) time / batchgrid time",
                polars / ours,
                1 / 1.5,
                "min",
                TIMES,
                speed=True,
            ),
        ]
        memory = tables["memory"]
        sizes = {
            "small": tables["file"]["bytes"] / 1e9,
            "big": tables["big_file"]["bytes"] / 1e9,
        }
        for which in ("small", "big"):
            pool = memory[which]["pool_peak_rss_bytes"]
            found.append(
                Target(
                    f"Tables {sizes[which]:.1f} GB: peak RSS of the worst pool process",
                    max(pool) / _MB,
                    300.0,
                    "max",
                    "MB",
                )
            )
        found.append(
            Target(
                f"Worker peak RSS, {sizes['big']:.1f} GB over {sizes['small']:.1f} GB"
                " (flat)",
                max(memory["big"]["pool_peak_rss_bytes"])
                / max(memory["small"]["pool_peak_rss_bytes"]),
                FLAT_FACTOR,
                "max",
                TIMES,
            )
        )
        found.append(
            Target(
                f"Producer peak RSS, {sizes['big']:.1f} GB over {sizes['small']:.1f} GB"
                " (flat)",
                memory["producer_big"]["peak_rss_bytes"]
                / memory["producer_small"]["peak_rss_bytes"],
                FLAT_FACTOR,
                "max",
                TIMES,
            )
        )
    return found


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |"]
    lines.append("|" + "|".join("---" for _ in headers) + "|")
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _s(stat: dict[str, Any]) -> str:
    return f"{stat['median']:.2f} / {stat['min']:.2f}"


def _fmt(value: float, unit: str) -> str:
    if unit == TIMES:
        return f"{value:.2f}{TIMES}"
    if unit == "%":
        return f"{value:+.1f}%"
    return f"{value:.1f} {unit}"


def _goal(target: Target) -> str:
    sign = "≥" if target.kind == "min" else "≤"
    goal = (
        f"{target.goal:.2f}{TIMES}"
        if target.unit == TIMES
        else f"{target.goal:g} {target.unit}"
    )
    return f"{sign} {goal}"


def _targets_section(found: list[Target]) -> str:
    rows = [
        [
            t.name,
            _fmt(t.measured, t.unit),
            _goal(t),
            "✅ PASS" if t.passed else "❌ FAIL",
        ]
        for t in found
    ]
    passed = sum(t.passed for t in found)
    return f"## Targets: {passed} of {len(found)} met\n\n" + _table(
        ["target", "measured (median)", "goal", ""], rows
    )


def _storage_ms(row: dict[str, Any]) -> float:
    """Milliseconds per image that opening by path and the atomic write add."""
    extra_s = _median(row["batchgrid_storage"]) - _median(row["batchgrid"])
    return 1000 * extra_s / row["images"]


def _images_section(results: dict[str, Any]) -> str:
    per_core = results.get("images_per_core")
    if not per_core:
        return ""
    rows = []
    for name, row in per_core.items():
        n = row["images"]
        for way in ("naive", "batchgrid"):
            stat = row[way]
            speed = (
                f"1.00{TIMES}"
                if way == "naive"
                else f"{row['speedup_median']:.2f}{TIMES}"
            )
            psnr = (
                "—"
                if way == "naive"
                else f"{row['psnr_output_db_min']:.1f} / "
                f"{row['psnr_pixels_db_min']:.1f}"
            )
            rows.append(
                [
                    f"{name} ({row['size'][0]}{TIMES}{row['size'][1]}, {n} files, "
                    f"{row['input_mb']:.0f} MB)",
                    way,
                    _s(stat),
                    f"{1000 * stat['median'] / n:.1f}",
                    speed,
                    psnr,
                ]
            )
    text = (
        "## Images, per core\n\n"
        "Decode, convert to 8-bit gray and encode as JPEG (quality 90) in one "
        "process, files in the page cache, outputs kept in memory. Naive: "
        "`Image.open(p).convert('L').save(buf, 'JPEG', quality=90)`; batchgrid: "
        "`imaging.convert_to_grayscale` as a worker calls it.\n\n"
        + _table(
            [
                "set",
                "way",
                "seconds, median / min",
                "ms per image",
                "vs naive",
                "PSNR dB vs naive: output / pixels (worst)",
            ],
            rows,
        )
        + "\n\n*PSNR output* compares the two JPEG files decoded; *pixels* compares "
        "batchgrid's gray pixels (asked for a lossless PNG) with `convert('L')`'s.\n"
    )
    storage = ", ".join(
        f"{name} +{_storage_ms(row):.1f} ms" for name, row in per_core.items()
    )
    text += (
        "\nOpening the file by path and writing the output atomically (temporary "
        f"file, fsync, rename), as a worker does, adds per image: {storage}.\n"
    )
    e2e = results.get("images_e2e")
    if not e2e:
        return text
    rows = []
    for run in e2e["runs"]:
        rows.append(
            [
                run["set"],
                str(run["workers"]),
                f"{run['images']} in {run['tasks']} tasks",
                _s(run["wall"]),
                f"{run['pure_conversion_s']:.2f}",
                f"{run['with_storage_s']:.2f}",
                f"{100 * run['overhead_median']:+.1f}%",
                f"{100 * (run['wall']['median'] / run['with_storage_s'] - 1):+.1f}%",
                f"{run.get('in_workers_s', float('nan')):.2f}",
                f"{100 * (run['wall']['median'] / run['in_workers_s'] - 1):+.1f}%"
                if run.get("in_workers_s")
                else "—",
            ]
        )
    text += (
        "\n## Images, end to end\n\n"
        "From `Producer.submit_images` (listing and planning included) to the job's "
        "`finished_at`, through embedded Valkey to local workers of one process "
        "each, reading from and writing to local disk. Pure conversion: the "
        "per-core batchgrid time of the set divided by the workers; conversion + "
        "storage adds opening by path and the atomic write, measured the same way. "
        "In the workers: the convert tasks' own time from the workers' logs, per "
        "worker. What the wall time holds beyond it is the broker, job bookkeeping "
        "and uneven last tasks; what that time holds beyond conversion + storage "
        "is the conversion running slower inside a worker than alone.\n\n"
        + _table(
            [
                "set",
                "workers",
                "images",
                "seconds, median / min",
                "pure conversion s",
                "conversion + storage s",
                "overhead vs pure",
                "overhead vs conversion + storage",
                "in the workers s",
                "overhead vs in the workers",
            ],
            rows,
        )
    )
    scaling = ", ".join(
        f"{name} {value['median']:.2f}{TIMES} (min-based {value['min']:.2f}{TIMES})"
        for name, value in e2e["scaling"].items()
    )
    text += f"\n\n2 workers vs 1: {scaling}."
    ceiling = results.get("images_cpu_scaling")
    if ceiling:
        slower = ceiling["side_by_side_s"] / ceiling["alone_s"]
        text += (
            " On this machine two processes converting side by side (no broker, no "
            f"storage) each take {slower:.2f}{TIMES} as long as one alone, so two "
            f"workers can be at most {ceiling['ceiling']:.2f}{TIMES} faster than one."
        )
    text += "\n"
    if e2e.get("sweep"):
        rows = [
            [str(row["max_items"]), str(row["tasks"]), _s(row["wall"])]
            for row in e2e["sweep"]
        ]
        text += (
            "\nImages per task, 2 MP set, 2 workers (bytes per task not limiting):\n\n"
            + _table(["images per task", "tasks", "seconds, median / min"], rows)
            + "\n"
        )
    return text


def _tables_section(results: dict[str, Any]) -> str:
    tables = results.get("tables")
    if not tables:
        return ""
    file = tables["file"]
    pandas = _median(_competitor(tables, "pandas")["time"])
    rows = []
    for row in tables["batchgrid"]:
        rows.append(
            [
                row["label"] + f", {row['chunk_mib']} MiB ranges",
                _s(row["time"]),
                f"{pandas / _median(row['time']):.2f}{TIMES}",
                "see Memory",
                "✓" if row["check"] == "ok" else f"✗ {row['check']}",
            ]
        )
    for row in tables["competitors"]:
        rows.append(
            [
                row["label"],
                _s(row["time"]),
                f"{pandas / _median(row['time']):.2f}{TIMES}",
                f"{row['peak_rss_bytes'] / _MB:.0f}",
                "✓" if row["check"] == "ok" else f"✗ {row['check']}",
            ]
        )
    naive = tables["naive"]
    rows.append(
        [
            naive["label"] + f" (extrapolated from {naive['slice_rows']:,} rows)",
            _s(naive["time"]),
            f"{pandas / _median(naive['time']):.3f}{TIMES}",
            "—",
            ("✓" if naive["check"] == "ok" else f"✗ {naive['check']}")
            + " (on the slice, vs pandas)",
        ]
    )
    text = (
        f"## Tables\n\n`{file['path']}`: {file['bytes'] / 1e9:.2f} GB, "
        f"{file['rows']:,} rows, 7 columns, 50 categories with Zipf-like weights, "
        "amounts with two decimals. Per category: count, sum, min, max (and "
        "batchgrid adds mean, missing and unparseable counts). Each engine reads "
        "the file from the page cache; pandas, DuckDB and polars run in a fresh "
        "process per repeat (import time excluded); batchgrid's time runs from "
        "`submit_table` (planning included) to the job's `finished_at`, with the "
        "workers already started.\n\n"
        + _table(
            [
                "engine",
                "seconds, median / min",
                "speed vs pandas",
                "peak RSS MB",
                "answer",
            ],
            rows,
        )
    )
    best = _best_batchgrid(tables)
    text += (
        f"\n\nbatchgrid breakdown (best configuration): planning "
        f"{_median(best['plan']):.2f} s of {_median(best['time']):.2f} s; "
        f"{best['ranges']} ranges of {best['range_s_mean'] or float('nan'):.2f} s "
        f"each on average; workers busy {100 * (best['utilization'] or 0):.0f}% of "
        "the time after planning. Naive: "
        f"{naive['tasks_in_slice']} tasks on the slice, "
        f"{naive['message_bytes'] / _MB:.1f} MB of JSON per task argument.\n"
    )
    rows = [
        [
            f"{row['chunk_mib']} MiB",
            str(row["ranges"]),
            _s(row["time"]),
            f"{_median(row['plan']):.2f}",
            f"{row['range_s_mean']:.2f}" if row["range_s_mean"] else "n/a",
            f"{100 * row['utilization']:.0f}%" if row["utilization"] else "n/a",
            ", ".join(f"{v / _MB:.0f}" for v in row.get("pool_peak_rss_bytes", [])),
        ]
        for row in tables["sweep"]
    ]
    text += (
        "\n### Range size sweep (2 workers of 1 process, same file)\n\n"
        + _table(
            [
                "chunk_bytes",
                "ranges",
                "seconds, median / min",
                "planning s",
                "s per range",
                "workers busy",
                "pool peak RSS MB",
            ],
            rows,
        )
        + "\n"
    )
    parser = tables.get("parser")
    if parser:
        mb = parser["range_bytes"] / _MB
        rows = [
            [
                row["parser"],
                f"{min(row['samples']):.3f}",
                f"{mb / min(row['samples']):.0f}",
            ]
            for row in parser["parsers"]
        ]
        text += (
            f"\n### Parser, one core, one {mb:.0f} MB range (read from the page cache "
            f"in {parser['read_s']:.3f} s)\n\n"
            + _table(["parser + group-by", "best s", "MB/s per core"], rows)
            + "\n"
        )
    memory = tables["memory"]
    rows = []
    for which, file_key in (("small", "file"), ("big", "big_file")):
        gb = tables[file_key]["bytes"] / 1e9
        pool = memory[which]["pool_peak_rss_bytes"]
        mains = memory[which]["main_peak_rss_bytes"]
        producer = memory[f"producer_{which}"]
        rows.append(
            [
                f"{gb:.2f} GB",
                ", ".join(f"{v / _MB:.0f}" for v in pool),
                ", ".join(f"{v / _MB:.0f}" for v in mains),
                f"{producer['peak_rss_bytes'] / _MB:.0f} "
                f"(after imports {producer['baseline_rss_bytes'] / _MB:.0f})",
                f"{producer['seconds']:.2f}",
            ]
        )
    big_run = tables.get("big_run", {})
    planning = memory["producer_small"]
    if "plan_ranges_s" in planning:
        text += (
            f"\n### Planning, {tables['file']['bytes'] / 1e9:.2f} GB (best of 3)\n\n"
            "Planning reads the whole file before the first task is sent, so its "
            "time adds to every job:\n\n"
            + _table(
                ["planner", "seconds"],
                [
                    [
                        f"`plan_ranges`, {planning['plan_block_bytes'] >> 20} MiB "
                        "reads (batchgrid)",
                        f"{planning['plan_ranges_s']:.2f}",
                    ],
                    [
                        "`plan_ranges`, 1 MiB reads",
                        f"{planning['plan_ranges_1mib_s']:.2f}",
                    ],
                    [
                        "floor: 1 MiB reads + `bytes.find` (memchr) for a quote",
                        f"{planning['scan_floor_s']:.2f}",
                    ],
                ],
            )
            + "\n"
        )
    text += (
        "\n## Memory\n\n"
        "Peak RSS (`VmHWM`) of each pool process and worker main process after the "
        "job(s) on that file with default settings (fresh workers per file), and of "
        "a process that only plans the job (the producer's share). A pool process "
        "is forked from its worker's main process and counts the pages it shares "
        "with it: an idle pool process already holds "
        f"{_idle_mb(memory)} MB before its first task.\n\n"
        + _table(
            [
                "file",
                "pool processes MB",
                "worker mains MB",
                "producer MB",
                "planning s",
            ],
            rows,
        )
    )
    if big_run:
        text += (
            f"\n\nThe {tables['big_file']['bytes'] / 1e9:.1f} GB file end to end: "
            f"{big_run['seconds']:.1f} s ({big_run['ranges']} ranges, planning "
            f"{big_run['plan_s']:.2f} s).\n"
        )
    return text


def _idle_mb(memory: dict[str, Any]) -> str:
    idle = memory.get("pool_idle_rss_bytes") or []
    return ", ".join(f"{value / _MB:.0f}" for value in idle) or "n/a"


def _broker_section(results: dict[str, Any]) -> str:
    noop = results.get("broker")
    if not noop:
        return ""
    cpu = noop["cpu_ms_per_task"]
    text = (
        "## Broker: the price of one task\n\n"
        f"{noop['tasks']} no-op tasks through embedded Valkey on batchgrid's Celery "
        "configuration (acks late, JSON, prefetch 1, results stored), one worker "
        "process. CPU per task:\n\n"
        + _table(
            ["worker", "client (send)", "broker", "total", "throughput"],
            [
                [
                    f"{cpu['worker']:.2f} ms",
                    f"{cpu['client']:.2f} ms",
                    f"{cpu['broker']:.2f} ms",
                    f"**{cpu['total']:.2f} ms**",
                    f"{noop['tasks_per_s']:.0f} tasks/s",
                ]
            ],
        )
    )
    work_ms = 20 * cpu["total"]
    text += (
        f"\n\nFor that to stay under 5% of a task, a task needs about {work_ms:.0f} ms "
        "of work."
    )
    per_core = results.get("images_per_core", {}).get("2MP")
    if per_core:
        image_ms = 1000 * per_core["batchgrid"]["median"] / per_core["images"]
        text += (
            f" A 2 MP image takes {image_ms:.0f} ms, so at least "
            f"{math.ceil(work_ms / image_ms)} of them per task."
        )
    parser = results.get("tables", {}).get("parser")
    if parser:
        best = min(min(row["samples"]) for row in parser["parsers"])
        text += (
            f" A {parser['range_bytes'] / _MB:.0f} MB range takes {1000 * best:.0f} ms,"
            f" {best * 1000 / cpu['total']:.0f}{TIMES} the task's price."
        )
    return text + "\n"


def _header(results: dict[str, Any]) -> str:
    machine = results["machine"]
    version_list = ", ".join(f"{k} {v}" for k, v in results["versions"].items())
    return (
        "# batchgrid benchmarks\n\n"
        f"Run {results['date']} ({results['mode']} run, {results['repeats']} repeats "
        f"per timing, {results.get('total_s', 0) / 60:.0f} min in all) on "
        f"{machine['cpu']}, {machine['cores']} cores, "
        f"{machine['memory_bytes'] / 2**30:.0f} GiB, {machine['os']}.\n\n"
        f"Versions: {version_list}.\n\n"
        "Reproduce with `make bench` (`make bench BENCH_ARGS=--quick` for a small "
        "run). Times are seconds, shown as median / min; ratios use medians. The "
        "12 MP photographs are real photographs from scikit-image upscaled with "
        "Lanczos (no real 12 MP photographs are available offline); the 2 MP set "
        "is cropped and mostly upscaled from the same photographs.\n"
        + _load_note(results)
    )


def _load_note(results: dict[str, Any]) -> str:
    load = results.get("machine_load")
    if not load:
        return ""
    share = 100 * load["foreign_share"]
    note = (
        f"\nThe machine is shared: other processes used {share:.0f}%"
        " of its CPU during the run. Each timing first waited for a quiet moment "
        f"({load['waited_s']:.0f} s of waiting in all), and a timing during which "
        "other processes took more than 5% of the cores was taken again "
        f"({load['retried_timings']} retried"
    )
    if load["disturbed_timings"]:
        note += f"; {load['disturbed_timings']} kept disturbed after 3 retries"
    return note + ").\n"


def markdown(results: dict[str, Any]) -> str:
    """The whole report: header, targets, then each section's table."""
    parts = [
        _header(results),
        _targets_section(targets(results)),
        _images_section(results),
        _tables_section(results),
        _broker_section(results),
        "![ratios](ratios.png)\n" if results.get("tables") else "",
    ]
    return "\n\n".join(part.strip() for part in parts if part) + "\n"


def write_chart(results: dict[str, Any], path: Path) -> None:
    """Horizontal bars of the speed ratios, each with its target marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    speed = [t for t in targets(results) if t.speed]
    tables = results.get("tables")
    panels = 2 if tables else 1
    figure, axes = plt.subplots(
        1, panels, figsize=(7 * panels, 0.6 * max(len(speed), 6) + 1.5), squeeze=False
    )

    left = axes[0][0]
    names = [t.name.replace(": ", ":\n", 1) for t in speed]
    values = [t.measured for t in speed]
    colors = ["#2e7d32" if t.passed else "#c62828" for t in speed]
    bars = left.barh(names, values, color=colors)
    for index, target in enumerate(speed):
        left.vlines(target.goal, index - 0.45, index + 0.45, color="black", lw=2)
    for bar, value in zip(bars, values, strict=True):
        left.text(
            value,
            bar.get_y() + bar.get_height() / 2,
            f" {value:.2f}{TIMES}",
            va="center",
        )
    left.set_xscale("log")
    if values:
        low = min([*values, *(t.goal for t in speed)])
        left.set_xlim(low / 1.5, max(values) * 3)
    left.invert_yaxis()
    left.set_xlabel("ratio (log scale); black line: target; green met, red missed")
    left.set_title("Speed ratios against the targets")

    if tables:
        right = axes[0][1]
        pandas = _median(_competitor(tables, "pandas")["time"])
        rows = [(r["label"], _median(r["time"])) for r in tables["batchgrid"]]
        rows += [(r["label"], _median(r["time"])) for r in tables["competitors"]]
        rows.append(("naive design (extrapolated)", _median(tables["naive"]["time"])))
        labels = [label for label, _ in rows]
        speedups = [pandas / seconds for _, seconds in rows]
        colors = ["#1565c0" if "batchgrid" in label else "#90a4ae" for label in labels]
        bars = right.barh(labels, speedups, color=colors)
        for bar, value in zip(bars, speedups, strict=True):
            right.text(
                value,
                bar.get_y() + bar.get_height() / 2,
                f" {value:.2f}{TIMES}",
                va="center",
            )
        right.axvline(1.0, color="black", lw=1)
        right.set_xscale("log")
        right.set_xlim(min(speedups) / 1.5, max(speedups) * 3)
        right.invert_yaxis()
        right.set_xlabel("speed vs pandas (log scale)")
        right.set_title(f"Tables, {tables['file']['bytes'] / 1e9:.2f} GB CSV")

    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write(results: dict[str, Any], results_dir: Path) -> str:
    """Write ``RESULTS.md`` and ``ratios.png`` into ``results_dir``; return the text."""
    text = markdown(results)
    (results_dir / "RESULTS.md").write_text(text)
    write_chart(results, results_dir / "ratios.png")
    return text


if __name__ == "__main__":
    loaded = json.loads(Path(sys.argv[1]).read_text())
    out_dir = Path(sys.argv[1]).parent
    print(write(loaded, out_dir))
