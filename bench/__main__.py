"""``python -m bench``: run every measurement, then write the table and the chart.

Example::

    python -m bench               # the full run, about half an hour on 2 cores
    python -m bench --quick       # small inputs, 2 repeats: a few minutes
    python -m bench --only images # one section (images, broker or tables)
"""

import argparse
import datetime
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from bench import images, report, tables
from bench.broker import measure_noop
from bench.harness import (
    as_plain,
    bench_settings,
    broker,
    machine_info,
    quiet,
    server_version,
    versions,
)

logger = logging.getLogger("bench")

BENCH_DIR = Path(__file__).resolve().parent
SECTIONS = ("images", "broker", "tables")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure batchgrid against the naive approach and other engines.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get("BENCH_QUICK", "") not in ("", "0"),
        help="small inputs and 2 repeats, for development (or BENCH_QUICK=1)",
    )
    parser.add_argument(
        "--gb", type=float, default=None, help="size of the main CSV in GiB (1)"
    )
    parser.add_argument(
        "--big-gb",
        type=float,
        default=None,
        help="size of the CSV for the memory-growth run in GiB (4)",
    )
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats (3)")
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run: {', '.join(SECTIONS)}",
    )
    parser.add_argument("--data-dir", type=Path, default=BENCH_DIR / "data")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    return parser.parse_args()


def main() -> None:
    """Run the sections asked for and write ``RESULTS.md`` and ``ratios.png``."""
    args = _arguments()
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)-14s %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("batchgrid", "celery", "kombu"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    sections = {part.strip() for part in args.only.split(",") if part.strip()}
    unknown = sections - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown section(s) {sorted(unknown)}; use {SECTIONS}")
    quick: bool = args.quick
    repeats = args.repeats or (2 if quick else 3)
    small_gib = args.gb or (0.2 if quick else 1.0)
    big_gib = args.big_gb or (0.8 if quick else 4.0)
    data_dir: Path = args.data_dir.resolve()
    state_dir = data_dir / "state"
    data_dir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    results: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if quick else "full",
        "repeats": repeats,
        "machine": machine_info(),
        "versions": versions(),
    }

    photo_sets: dict[str, images.PhotoSet] = {}
    if "images" in sections:
        photo_sets = images.make_photos(data_dir, quick=quick)
        results["images_per_core"] = {
            name: images.per_core(photos, repeats=repeats, data_dir=data_dir)
            for name, photos in photo_sets.items()
        }
        results["images_cpu_scaling"] = images.cpu_scaling(photo_sets["2MP"])
    if "tables" in sections:
        main_csv = tables.make_csv(data_dir, small_gib)
        big_csv = tables.make_csv(data_dir, big_gib)

    with broker(state_dir) as server:
        results["versions"]["valkey-server"] = server_version(server.url)
        settings = bench_settings(data_dir, server.url, state_dir)
        results["settings"] = {
            "chunk_bytes": settings.chunk_bytes,
            "image_batch_bytes": settings.image_batch_bytes,
            "image_batch_max_items": settings.image_batch_max_items,
        }
        if "broker" in sections:
            valkey_pid = int((state_dir / "valkey" / "valkey.pid").read_text())
            results["broker"] = measure_noop(
                settings,
                tasks=500 if quick else 2000,
                valkey_pid=valkey_pid,
                log_dir=data_dir / "logs",
            )
        if "images" in sections:
            results["images_e2e"] = images.end_to_end(
                settings,
                photo_sets,
                results["images_per_core"],
                repeats=repeats,
                data_dir=data_dir,
            )
        if "tables" in sections:
            results["tables"] = tables.run_tables(
                settings,
                main_csv,
                big_csv,
                repeats=repeats,
                naive_rows=100_000 if quick else 500_000,
                data_dir=data_dir,
            )
    results["total_s"] = time.perf_counter() - started
    results["machine_load"] = quiet.summary()

    results_dir: Path = args.results_dir
    results_dir.mkdir(parents=True, exist_ok=True)
    plain = as_plain(results)
    (results_dir / "results.json").write_text(json.dumps(plain, indent=2))
    text = report.write(plain, results_dir)
    if not quick and sections == set(SECTIONS):
        for name in ("RESULTS.md", "ratios.png"):
            shutil.copyfile(results_dir / name, BENCH_DIR / name)
        logger.info("copied the results to %s", BENCH_DIR / "RESULTS.md")
    print(text)
    logger.info("done in %.0f s; see %s", results["total_s"], results_dir)


if __name__ == "__main__":
    main()
