"""Images: batchgrid's grayscale conversion against the naive Pillow loop, per core
and end to end through the broker.

The photographs are the real ones bundled in the scikit-image wheel, cropped to 4:3
and re-encoded as JPEG (quality 92) at about 2 MP and 12 MP. None of them has 12 MP
of its own, so the 12 MP set is upscaled (Lanczos): smoother than a camera's
photographs, which makes its JPEGs smaller and somewhat faster to decode.
"""

import io
import json
import logging
import math
import re
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from batchgrid.imaging import ImageOptions, convert_to_grayscale
from batchgrid.settings import Settings
from batchgrid.storage import write_atomic
from bench.harness import Stat, cluster, quiet, run_json, wait_job

__all__ = ["PhotoSet", "cpu_scaling", "end_to_end", "make_photos", "per_core"]

logger = logging.getLogger(__name__)

#: Real photographs shipped in scikit-image's ``data`` folder.
SOURCE_PHOTOS = (
    "retina.jpg",
    "hubble_deep_field.jpg",
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "motorcycle_left.png",
    "rocket.jpg",
)
#: Landscape sizes of the sets; portrait sources get the same size turned.
SET_SIZES = {"12MP": (4000, 3000), "2MP": (1632, 1224)}
#: Images per set: (full run, quick run).
SET_COUNTS = {"12MP": (24, 6), "2MP": (192, 48)}
#: Quality of the generated inputs, as a camera or phone would save them.
INPUT_QUALITY = 92
#: Quality of the naive loop's output: batchgrid's default ``jpeg_quality``.
NAIVE_QUALITY = 90
#: Bumped when the way inputs are made changes, so cached sets are made again.
PHOTOS_VERSION = 1
#: Images per task tried in the batch-size sweep (bytes per task not limiting).
SWEEP_MAX_ITEMS = (1, 4, 8, 16, 32)


@dataclass(frozen=True)
class PhotoSet:
    """A folder of generated JPEG photographs of one size."""

    name: str
    folder: Path
    paths: list[Path]
    size: tuple[int, int]

    @property
    def total_bytes(self) -> int:
        return sum(path.stat().st_size for path in self.paths)


def _skimage_data() -> Path:
    spec = find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("scikit-image is not installed; run `make bench`")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _make_one(source: Path, target: Path, size: tuple[int, int], variant: int) -> None:
    """Crop ``source`` to the aspect of ``size``, resize, maybe mirror, save."""
    with Image.open(source) as original:
        image = original.convert("RGB")
    width, height = size if image.width >= image.height else size[::-1]
    aspect = width / height
    # The largest box of the target aspect, shrunk a little and moved per variant.
    box_w = min(image.width, image.height * aspect) * (1 - 0.04 * (variant % 4))
    box_h = box_w / aspect
    spare_x, spare_y = image.width - box_w, image.height - box_h
    left = spare_x * ((variant * 0.37) % 1)
    top = spare_y * ((variant * 0.61) % 1)
    image = image.crop((left, top, left + box_w, top + box_h))
    image = image.resize((width, height), Image.Resampling.LANCZOS)
    if variant % 2:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    target.parent.mkdir(parents=True, exist_ok=True)
    image.save(target, "JPEG", quality=INPUT_QUALITY)


def make_photos(data_dir: Path, *, quick: bool) -> dict[str, PhotoSet]:
    """Generate (or reuse) the photo sets under ``data_dir/photos/{full,quick}``."""
    root = data_dir / "photos" / ("quick" if quick else "full")
    counts = {name: pair[1 if quick else 0] for name, pair in SET_COUNTS.items()}
    manifest = {"version": PHOTOS_VERSION, "sizes": SET_SIZES, "counts": counts}
    manifest_path = root / "manifest.json"
    plan: dict[str, list[tuple[Path, Path, int]]] = {}
    source_dir = _skimage_data()
    for name, count in counts.items():
        plan[name] = [
            (
                source_dir / SOURCE_PHOTOS[index % len(SOURCE_PHOTOS)],
                root / name / f"photo-{index:03d}.jpg",
                index // len(SOURCE_PHOTOS),
            )
            for index in range(count)
        ]
    current = json.loads(json.dumps(manifest))
    if not (
        manifest_path.exists() and json.loads(manifest_path.read_text()) == current
    ):
        logger.info("making photo sets in %s", root)
        shutil.rmtree(root, ignore_errors=True)
        with ProcessPoolExecutor(max_workers=2) as pool:
            futures = [
                pool.submit(_make_one, source, target, SET_SIZES[name], variant)
                for name, items in plan.items()
                for source, target, variant in items
            ]
            for future in futures:
                future.result()
        manifest_path.write_text(json.dumps(manifest))
    return {
        name: PhotoSet(
            name, root / name, [target for _, target, _ in items], SET_SIZES[name]
        )
        for name, items in plan.items()
    }


def naive_convert(path: Path) -> bytes:
    """The naive way: open, convert('L'), save as JPEG."""
    with Image.open(path) as image:
        gray = image.convert("L")
    buffer = io.BytesIO()
    gray.save(buffer, "JPEG", quality=NAIVE_QUALITY)
    return buffer.getvalue()


def batchgrid_convert(
    path: Path, options: ImageOptions, name: str | None = None
) -> bytes:
    """batchgrid's conversion, as a worker runs it on one file."""
    with path.open("rb") as handle:
        return convert_to_grayscale(
            handle, name=name or path.name, options=options
        ).data


def _pixels(data: bytes) -> np.ndarray[Any, Any]:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L"), dtype=np.float64)


def psnr_db(a: np.ndarray[Any, Any], b: np.ndarray[Any, Any]) -> float:
    """Peak signal-to-noise ratio of two 8-bit images (inf when equal)."""
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def _timed(convert: Any, path: Path) -> float:
    started = time.perf_counter()
    convert(path)
    return time.perf_counter() - started


def per_core(photos: PhotoSet, *, repeats: int, data_dir: Path) -> dict[str, Any]:
    """Time both ways over the whole set in this process (one core), and compare.

    The ways alternate image by image, so a slow spell of the machine hits both.
    A third way adds what a worker does around the conversion: open the file by
    path and write the output atomically (temporary file, fsync, rename).

    PSNR is computed twice: on the gray pixels (batchgrid asked for a lossless PNG),
    which is the conversion itself, and on the two JPEG outputs, which adds the
    encoder's reaction to one-level differences.
    """
    options = ImageOptions()
    paths = photos.paths
    write_dir = data_dir / "out" / f"per-core-{photos.name}"
    shutil.rmtree(write_dir, ignore_errors=True)

    def with_storage(path: Path) -> None:
        write_atomic(str(write_dir / path.name), batchgrid_convert(path, options))

    ways = {
        "naive": naive_convert,
        "batchgrid": lambda path: batchgrid_convert(path, options),
        "batchgrid_storage": with_storage,
    }
    for path in paths:  # the files are in the page cache for every way
        path.read_bytes()
    for convert in ways.values():
        convert(paths[0])

    def one_pass(attempt: int) -> dict[str, float]:
        totals = dict.fromkeys(ways, 0.0)
        for index, path in enumerate(paths):
            order = list(ways) if (index + attempt) % 2 == 0 else list(ways)[::-1]
            for way in order:
                totals[way] += _timed(ways[way], path)
        return totals

    samples: dict[str, list[float]] = {way: [] for way in ways}
    for attempt in range(repeats):
        totals = quiet.run(lambda: one_pass(attempt))  # noqa: B023
        for way, total in totals.items():
            samples[way].append(total)
        logger.info(
            "%s per core, repeat %d: naive %.2f s, batchgrid %.2f s",
            photos.name,
            attempt + 1,
            totals["naive"],
            totals["batchgrid"],
        )
    shutil.rmtree(write_dir, ignore_errors=True)

    pixel_psnr, output_psnr = [], []
    for path in paths:
        naive = naive_convert(path)
        ours = batchgrid_convert(path, options)
        lossless = batchgrid_convert(path, options, name=path.stem + ".png")
        with Image.open(path) as image:
            reference = np.asarray(image.convert("L"), dtype=np.float64)
        pixel_psnr.append(psnr_db(reference, _pixels(lossless)))
        output_psnr.append(psnr_db(_pixels(naive), _pixels(ours)))

    naive_stat, ours = Stat(samples["naive"]), Stat(samples["batchgrid"])
    return {
        "set": photos.name,
        "images": len(paths),
        "size": list(photos.size),
        "input_mb": photos.total_bytes / 1e6,
        "naive": naive_stat,
        "batchgrid": ours,
        "batchgrid_storage": Stat(samples["batchgrid_storage"]),
        "speedup_median": naive_stat.median / ours.median,
        "speedup_min": naive_stat.min / ours.min,
        "psnr_pixels_db_min": min(pixel_psnr),
        "psnr_pixels_db_mean": float(np.mean([min(v, 99.0) for v in pixel_psnr])),
        "psnr_output_db_min": min(output_psnr),
        "psnr_output_db_mean": float(np.mean([min(v, 99.0) for v in output_psnr])),
    }


def cpu_scaling(photos: PhotoSet) -> dict[str, float]:
    """How much two processes converting side by side slow each other down.

    The same conversion runs in one process alone, then in two at once; two
    workers can be at most ``2 * alone / side_by_side`` times faster than one on
    this machine, whatever the broker does.
    """
    command = ["bench.engines", "convert", "--folder", str(photos.folder)]

    def side_by_side() -> float:
        with ThreadPoolExecutor(max_workers=2) as pool:
            runs = list(pool.map(lambda _: run_json(command), range(2)))
        return max(float(run["seconds"]) for run in runs)

    alone_s = min(quiet.run(lambda: float(run_json(command)["seconds"])) for _ in "ab")
    pair_s = min(quiet.run(side_by_side) for _ in "ab")
    logger.info("%s: %.2f s alone, %.2f s side by side", photos.name, alone_s, pair_s)
    return {
        "alone_s": alone_s,
        "side_by_side_s": pair_s,
        "ceiling": 2 * alone_s / pair_s,
    }


#: The line each convert task logs when it ends (batchgrid.tasks), with its job id.
_TASK_LINE = re.compile(r"job=(\w+) .* converted \d+/\d+ images in ([\d.]+) s")


def task_seconds(log_dir: Path, job_id: str) -> float:
    """Seconds the job's convert tasks spent converting, summed over the workers'
    logs: reading, decoding, encoding and the atomic writes, in the workers."""
    return sum(
        float(match[2])
        for log in log_dir.glob("worker-*.log")
        for match in _TASK_LINE.finditer(log.read_text())
        if match[1] == job_id
    )


def _run_job(run: Any, photos: PhotoSet, out_dir: Path, **overrides: Any) -> Any:
    producer = run.producer_with(**overrides) if overrides else run.producer

    def once() -> tuple[float, Any]:
        shutil.rmtree(out_dir, ignore_errors=True)
        started = time.time()
        job_id = producer.submit_images([str(photos.folder)], str(out_dir))
        return wait_job(run.store, job_id, started)

    seconds, record = quiet.run(once)
    if record.failed:
        raise RuntimeError(f"{record.failed} images failed in job {record.id}")
    return seconds, record


def end_to_end(
    settings: Settings,
    photo_sets: dict[str, PhotoSet],
    per_core_results: dict[str, dict[str, Any]],
    *,
    repeats: int,
    data_dir: Path,
) -> dict[str, Any]:
    """Submit each set through the broker to 1 and then 2 workers (1 process each).

    Pure conversion time is the in-process batchgrid time of the set (median) over
    the number of workers; the overhead is the rest: broker, storage reads, atomic
    writes with fsync, job bookkeeping, uneven last tasks.
    """
    out_root = data_dir / "out"
    results: dict[str, Any] = {"runs": [], "sweep": []}
    for workers in (1, 2):
        with cluster(
            settings,
            workers=workers,
            concurrency=1,
            queues=[settings.images_queue],
            log_dir=data_dir / "logs" / f"images-{workers}",
        ) as run:
            for name, photos in photo_sets.items():
                _run_job(run, photos, out_root / "warmup")  # first-task costs
                samples, in_workers, tasks = [], [], 0
                log_dir = data_dir / "logs" / f"images-{workers}"
                for attempt in range(repeats):
                    seconds, record = _run_job(run, photos, out_root / f"{name}-e2e")
                    samples.append(seconds)
                    in_workers.append(task_seconds(log_dir, record.id) / workers)
                    tasks = int(record.options.get("tasks", 0))
                    logger.info(
                        "%s, %d worker(s), repeat %d: %.2f s in %d tasks",
                        name,
                        workers,
                        attempt + 1,
                        seconds,
                        tasks,
                    )
                pure_s = per_core_results[name]["batchgrid"].median / workers
                storage_s = per_core_results[name]["batchgrid_storage"].median / workers
                stat = Stat(samples)
                results["runs"].append(
                    {
                        "set": name,
                        "workers": workers,
                        "images": len(photos.paths),
                        "tasks": tasks,
                        "wall": stat,
                        "pure_conversion_s": pure_s,
                        "with_storage_s": storage_s,
                        # The tasks' own time in the workers, per worker: what
                        # the wall time holds beyond it is the broker, the job
                        # bookkeeping and the last tasks ending unevenly.
                        "in_workers_s": Stat(in_workers).median,
                        "overhead_median": stat.median / pure_s - 1,
                        "overhead_min": stat.min / pure_s - 1,
                    }
                )
            if workers == 2:
                results["sweep"] = _batch_sweep(
                    run, photo_sets["2MP"], out_root, repeats=repeats
                )
    shutil.rmtree(out_root, ignore_errors=True)
    for name in photo_sets:
        one, two = (
            next(r for r in results["runs"] if r["set"] == name and r["workers"] == w)
            for w in (1, 2)
        )
        results.setdefault("scaling", {})[name] = {
            "median": one["wall"].median / two["wall"].median,
            "min": one["wall"].min / two["wall"].min,
        }
    return results


def _batch_sweep(
    run: Any, photos: PhotoSet, out_root: Path, *, repeats: int
) -> list[dict[str, Any]]:
    """End-to-end time of the 2 MP set with 2 workers, by images per task."""
    rows = []
    for max_items in SWEEP_MAX_ITEMS:
        samples, tasks = [], 0
        for _ in range(repeats):
            seconds, record = _run_job(
                run,
                photos,
                out_root / "sweep",
                image_batch_max_items=max_items,
                image_batch_bytes=1 << 40,
            )
            samples.append(seconds)
            tasks = int(record.options.get("tasks", 0))
        stat = Stat(samples)
        logger.info(
            "2MP sweep: %d images per task: %.2f s (%d tasks)",
            max_items,
            stat.median,
            tasks,
        )
        rows.append({"max_items": max_items, "tasks": tasks, "wall": stat})
    return rows
