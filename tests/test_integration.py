"""End to end through embedded Valkey and real Celery worker processes."""

import io
import json
import random
from pathlib import Path

import pytest
import redis
from PIL import Image

from batchgrid.celery_app import create_app
from batchgrid.errors import ColumnNotFoundError, PathOutsideRootsError
from batchgrid.producer import Producer
from batchgrid.tables import CsvDialect, plan_ranges, read_header
from tests.conftest import (
    Cluster,
    assert_matches_reference,
    pandas_reference,
    start_cluster,
)

pytestmark = pytest.mark.integration


def _jpeg(path: Path, size: tuple[int, int] = (64, 48), color: str = "orange") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "JPEG", quality=90)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def _write_csv(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


def test_images_job_when_some_files_are_bad_reports_each_by_name(
    cluster: Cluster, workspace: Path
) -> None:
    src = workspace / "in"
    (src / "nested").mkdir(parents=True)
    good = _jpeg(src / "a.jpg")
    _jpeg(src / "nested" / "b.jpeg", color="navy")
    Image.new("RGBA", (20, 20), (255, 0, 0, 0)).save(src / "clear.png")
    (src / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (src / "notes.jpg").write_text("not an image")
    (src / "empty.png").write_bytes(b"")
    Image.new("L", (400, 400)).save(src / "huge.png")
    settings = cluster.settings.model_copy(update={"max_image_pixels": 100_000})
    producer = Producer(settings, create_app(settings), cluster.store)

    job_id = producer.submit_images([str(src)], str(workspace / "out"))
    record = cluster.wait(job_id)

    items = cluster.store.items(job_id)
    assert record.state == "succeeded"
    assert (record.total, record.done, record.failed) == (7, 7, 4)
    errors = {name: item["error"] for name, item in items.items() if "error" in item}
    assert errors == {
        "truncated.jpg": "truncated",
        "notes.jpg": "unidentified",
        "empty.png": "empty",
        "huge.png": "too_many_pixels",
    }
    assert all(name in items[name]["message"] for name in errors)
    for name in ("a.jpg", "nested/b.jpeg", "clear.png"):
        with Image.open(workspace / "out" / name) as converted:
            assert converted.mode == "L"
    with Image.open(workspace / "out" / "clear.png") as clear:
        assert clear.getpixel((0, 0)) == 255
    leftovers = [
        p for p in (workspace / "out").rglob("*") if p.name.startswith(".tmp-")
    ]
    assert leftovers == []


def test_images_job_when_an_output_cannot_be_written_names_it_unwritable(
    cluster: Cluster, workspace: Path
) -> None:
    src = workspace / "in"
    src.mkdir()
    _jpeg(src / "a.jpg")
    _jpeg(src / "b.jpg")
    (workspace / "out" / "b.jpg").mkdir(parents=True)  # in the way of b's output

    record = cluster.wait(
        cluster.producer.submit_images([str(src)], str(workspace / "out"))
    )

    items = cluster.store.items(record.id)
    assert (record.state, record.done, record.failed) == ("succeeded", 2, 1)
    assert "error" not in items["a.jpg"]
    assert items["b.jpg"]["error"] == "unwritable"
    assert str(workspace / "out" / "b.jpg") in items["b.jpg"]["message"]


def test_images_job_when_run_twice_gives_identical_outputs(
    cluster: Cluster, workspace: Path
) -> None:
    src = workspace / "in"
    src.mkdir()
    for index in range(5):
        _jpeg(src / f"p{index}.jpg", color=f"#{index * 40:02x}8040")

    first = cluster.wait(
        cluster.producer.submit_images([str(src)], str(workspace / "o"))
    )
    snapshot = {p.name: p.read_bytes() for p in (workspace / "o").iterdir()}
    second = cluster.wait(
        cluster.producer.submit_images([str(src)], str(workspace / "o"))
    )

    assert first.state == second.state == "succeeded"
    assert {p.name: p.read_bytes() for p in (workspace / "o").iterdir()} == snapshot


def test_images_job_when_source_is_outside_roots_is_refused(cluster: Cluster) -> None:
    with pytest.raises(PathOutsideRootsError, match="outside the storage roots"):
        cluster.producer.submit_images(["/etc"], str(cluster.root / "x"))


def test_table_job_when_chunks_are_unequal_mean_is_total_over_count(
    cluster: Cluster, workspace: Path
) -> None:
    csv = _write_csv(workspace / "t.csv", "k,v\na,10.000000000000\na,0\na,0\na,0\na,\n")
    with csv.open("rb") as handle:
        header = read_header(handle, name="t.csv", dialect=CsvDialect())
        handle.seek(0)
        ranges = plan_ranges(
            handle,
            start=header.end_offset,
            size=csv.stat().st_size,
            chunk_bytes=17,
            dialect=CsvDialect(),
        )
    text = csv.read_bytes()
    assert [text[r.start : r.end] for r in ranges] == [
        b"a,10.000000000000\n",
        b"a,0\na,0\na,0\na,\n",
    ]

    record = cluster.wait(
        cluster.producer.submit_table(str(csv), by=["k"], values=["v"], chunk_bytes=17)
    )

    result = cluster.store.result(record.id)
    assert record.state == "succeeded" and result is not None
    [group] = result["groups"]
    assert group["key"] == ["a"]
    assert group["stats"]["v"] == {
        "count": 4,
        "sum": 10.0,
        "mean": 2.5,
        "min": 0.0,
        "max": 10.0,
        "missing": 1,
        "unparseable": 0,
    }


def _messy_csv(path: Path, rows: int, seed: int) -> Path:
    """Quoted keys with commas and newlines, CRLF endings, skewed groups, bad values."""
    rng = random.Random(seed)
    groups = ["north", "south", '"east, coast"', '"multi\nline"', "w", ""]
    weights = [40, 25, 15, 10, 5, 5]
    lines = ["region,amount,qty"]
    for _ in range(rows):
        region = rng.choices(groups, weights)[0]
        roll = rng.random()
        amount = (
            ""
            if roll < 0.05
            else "n/a?"
            if roll < 0.07
            else f"{rng.uniform(-500, 5000):.2f}"
        )
        lines.append(f"{region},{amount},{rng.randint(0, 9)}")
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return path


@pytest.mark.parametrize("chunk_bytes", [37, 1000, 10**9])
def test_table_job_for_any_chunk_size_equals_pandas(
    cluster: Cluster, workspace: Path, chunk_bytes: int
) -> None:
    csv = _messy_csv(workspace / "m.csv", rows=3000, seed=7)

    record = cluster.wait(
        cluster.producer.submit_table(
            str(csv), by=["region"], values=["amount", "qty"], chunk_bytes=chunk_bytes
        )
    )

    result = cluster.store.result(record.id)
    assert record.state == "succeeded" and result is not None
    assert_matches_reference(
        result, pandas_reference(csv, by=["region"], values=["amount", "qty"])
    )


def test_table_job_with_one_worker_process_equals_two_workers(
    cluster: Cluster, workspace: Path, broker_url: str
) -> None:
    csv = _messy_csv(workspace / "m.csv", rows=2000, seed=11)
    job = cluster.wait(
        cluster.producer.submit_table(
            str(csv), by=["region"], values=["amount"], chunk_bytes=500
        )
    )
    solo = start_cluster(
        workspace,
        broker_url,
        workers=1,
        concurrency=1,
        tables_queue="tables-solo",
        images_queue="images-solo",
    )
    try:
        solo_job = solo.wait(
            solo.producer.submit_table(
                str(csv), by=["region"], values=["amount"], chunk_bytes=500
            )
        )
    finally:
        solo.workers.stop()

    many, one = cluster.store.result(job.id), solo.store.result(solo_job.id)
    assert many is not None and one is not None
    assert one["groups"] == many["groups"]
    workers_used = {p["worker"] for p in cluster.store.items(job.id).values()}
    assert len(workers_used) == 2, workers_used


def test_task_messages_stay_small_whatever_the_file_size(
    cluster: Cluster, workspace: Path
) -> None:
    csv = _messy_csv(workspace / "big.csv", rows=60_000, seed=3)
    src = workspace / ("deep" * 20) / ("folder" * 20)
    src.mkdir(parents=True)
    for index in range(80):
        _jpeg(src / f"{'long-name-' * 8}{index}.jpg", size=(8, 8))
    queue = "probe-unconsumed"
    settings = cluster.settings.model_copy(
        update={"tables_queue": queue, "images_queue": queue}
    )
    producer = Producer(settings, create_app(settings), cluster.store)
    client = redis.Redis.from_url(cluster.settings.broker_url or "")

    producer.submit_table(
        str(csv), by=["region"], values=["amount"], chunk_bytes=64 * 1024
    )
    producer.submit_images([str(src)], str(workspace / "out"))
    messages = client.lrange(queue, 0, -1)
    client.delete(queue)

    assert len(messages) > 10
    sizes = [len(message) for message in messages]
    assert max(sizes) < 4096, max(sizes)
    assert all(json.loads(m)["content-type"] == "application/json" for m in messages)


def test_table_job_when_file_changes_under_it_fails_with_the_reason(
    cluster: Cluster, workspace: Path
) -> None:
    csv = _messy_csv(workspace / "c.csv", rows=20_000, seed=5)
    queue = "held"
    settings = cluster.settings.model_copy(update={"tables_queue": queue})
    producer = Producer(settings, create_app(settings), cluster.store)
    job_id = producer.submit_table(
        str(csv), by=["region"], values=["amount"], chunk_bytes=4096
    )
    csv.write_bytes(csv.read_bytes()[:1000])
    client = redis.Redis.from_url(cluster.settings.broker_url or "")
    while (message := client.rpop(queue)) is not None:
        client.lpush(cluster.settings.tables_queue, message)

    record = cluster.wait(job_id)

    assert record.state == "failed"
    assert record.error is not None and "c.csv" in record.error
    assert "changed" in record.error


def test_table_job_when_column_is_missing_lists_the_columns_found(
    cluster: Cluster, workspace: Path
) -> None:
    csv = _write_csv(workspace / "f.csv", "carrier,arr_delay\nAA,1\n")

    with pytest.raises(ColumnNotFoundError, match="carrier, arr_delay"):
        cluster.producer.submit_table(str(csv), by=["carier"], values=["arr_delay"])


def test_table_job_when_file_has_only_a_header_succeeds_with_no_groups(
    cluster: Cluster, workspace: Path
) -> None:
    csv = _write_csv(workspace / "h.csv", "k,v\n")

    record = cluster.wait(
        cluster.producer.submit_table(str(csv), by=["k"], values=["v"])
    )

    result = cluster.store.result(record.id)
    assert record.state == "succeeded" and result is not None
    assert result["groups"] == []
