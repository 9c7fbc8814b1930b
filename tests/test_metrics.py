"""Metrics without workers: queue keys, folding of exited processes' files, the
publish stamp, quantiles, the dashboard file and local ports."""

import json
import math
import os
import re
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from rich.console import Console

from batchgrid import metrics
from batchgrid.backlog import queue_keys
from batchgrid.celery_app import TASK_NAMES, create_app
from batchgrid.jobs import JobStore
from batchgrid.local import LocalWorkers
from batchgrid.settings import Settings
from batchgrid.top import NodeStats, Snapshot, bucket_quantile, render

FILES = Path(__file__).parent.parent / "charts" / "batchgrid" / "files"


def test_queue_keys_when_priorities_are_on_name_every_priority_list() -> None:
    keys = queue_keys("tables")

    assert keys == ["tables", "tables\x06\x163", "tables\x06\x166", "tables\x06\x169"]


def _write(path: Path, name: str, labels: dict[str, str], value: float) -> None:
    mmap = MmapedDict(str(path))
    key = mmap_key("batchgrid_tasks", name, list(labels), list(labels.values()), "help")
    before, _ = mmap.read_value(key)
    mmap.write_value(key, before + value, 0.0)
    mmap.close()


def _totals(folder: Path) -> dict[str, float]:
    files = [str(f) for f in folder.glob("*.db")]
    merged = MultiProcessCollector.merge(files)
    return {
        sample.labels["task"]: sample.value
        for metric in merged
        for sample in metric.samples
        if sample.name == "batchgrid_tasks_total"
    }


def test_fold_dead_processes_when_children_exited_keeps_sums_and_drops_files(
    tmp_path: Path,
) -> None:
    for pid, value in ((101, 3.0), (102, 4.0), (103, 5.0)):
        _write(
            tmp_path / f"counter_{pid}.db",
            "batchgrid_tasks_total",
            {"task": "a"},
            value,
        )
    _write(tmp_path / "counter_103.db", "batchgrid_tasks_total", {"task": "b"}, 1.0)
    before = _totals(tmp_path)

    folded = metrics.fold_dead_processes(tmp_path, alive=lambda pid: pid == 103)
    again = metrics.fold_dead_processes(tmp_path, alive=lambda pid: pid == 103)

    assert (folded, again) == (2, 0)
    assert sorted(f.name for f in tmp_path.glob("*.db")) == [
        "counter_103.db",
        "counter_archive.db",
    ]
    assert _totals(tmp_path) == before == {"a": 12.0, "b": 1.0}


def test_fold_dead_processes_when_a_process_recycles_many_times_keeps_two_files(
    tmp_path: Path,
) -> None:
    for pid in range(1000, 1050):
        _write(
            tmp_path / f"counter_{pid}.db", "batchgrid_tasks_total", {"task": "a"}, 1
        )
        metrics.fold_dead_processes(tmp_path, alive=lambda p, live=pid: p == live)

    assert len(list(tmp_path.glob("*.db"))) == 2
    assert _totals(tmp_path) == {"a": 50.0}


def test_publish_hook_stamps_the_publish_time_into_the_headers() -> None:
    headers: dict[str, object] = {}

    metrics._stamp_published_at(sender="t", headers=headers, routing_key="q")

    stamped = headers[metrics.PUBLISHED_AT_HEADER]
    assert isinstance(stamped, float)
    assert abs(stamped - time.time()) < 5


def test_ready_at_when_the_eta_is_later_than_the_publish_time_is_the_eta() -> None:
    eta = datetime(2030, 1, 1, tzinfo=UTC)
    request = SimpleNamespace(batchgrid_published_at=1000.0, eta=eta.isoformat())

    assert metrics._ready_at(request) == eta.timestamp()
    assert metrics._ready_at(SimpleNamespace(eta=None)) is None


def test_node_name_when_node_name_is_set_is_that(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("NODE_NAME", "node-7")

    assert metrics.node_name() == "node-7"


@pytest.mark.parametrize(
    ("q", "expected"),
    [(0.1, 0.2), (0.5, 1.0), (0.8, 4.0), (0.95, 5.0)],
)
def test_bucket_quantile_interpolates_like_prometheus(
    q: float, expected: float
) -> None:
    # 10 observations: 5 in (0, 1], 4 in (1, 5], 1 above 5.
    buckets = [(1.0, 5.0), (5.0, 9.0), (math.inf, 10.0)]

    got = bucket_quantile(q, buckets)

    assert got == pytest.approx(expected)


def test_bucket_quantile_when_empty_is_none() -> None:
    assert bucket_quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]) is None


def test_render_shows_queues_and_nodes() -> None:
    snapshot = Snapshot(
        source="test",
        queues={"tables": 7},
        nodes={"node-a": NodeStats(succeeded=3, wait_s={0.5: 0.25}, runtime_s={})},
    )
    console = Console(width=120, record=True)

    console.print(render(snapshot))

    text = console.export_text()
    assert "tables" in text and "7" in text
    assert "node-a" in text and "250 ms" in text


def test_local_workers_when_metrics_port_is_unset_serve_no_metrics(
    tmp_path: Path,
) -> None:
    unset = Settings(_env_file=None, broker_url="redis://127.0.0.1:1/0")
    chosen = Settings(
        _env_file=None, broker_url="redis://127.0.0.1:1/0", metrics_port=9900
    )

    assert LocalWorkers(unset, log_dir=tmp_path)._metrics_port(1) == "0"
    assert LocalWorkers(chosen, log_dir=tmp_path)._metrics_port(1) == "9901"


def test_dashboard_panels_use_the_datasource_variable_and_cover_the_issue() -> None:
    dashboard = json.loads((FILES / "grafana-dashboard.json").read_text())

    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    panels = dashboard["panels"]
    titles = " | ".join(panel["title"].lower() for panel in panels)

    assert variables["datasource"]["type"] == "datasource"
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(target["expr"] for target in panel["targets"]), panel["title"]
    for wanted in (
        "throughput",
        "queue length",
        "queue wait",
        "runtime",
        "failures by reason",
        "job progress",
        "workers up",
    ):
        assert wanted in titles
    assert len({panel["id"] for panel in panels}) == len(panels)


def test_worker_collector_reports_pool_and_queues() -> None:
    collector = metrics.WorkerCollector("w1@n", queues=["images"], pool_processes=4)

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in collector.collect()
        for s in family.samples
    }

    node = metrics.node_name()
    pool_labels = (("node", node), ("worker", "w1@n"))
    consuming = (("node", node), ("queue", "images"), ("worker", "w1@n"))
    assert samples[("batchgrid_worker_pool_processes", pool_labels)] == 4
    assert samples[("batchgrid_worker_consuming", consuming)] == 1


@pytest.mark.integration
def test_broker_collector_counts_priority_lists_held_messages_and_jobs(
    broker_url: str, tmp_path: Path
) -> None:
    settings = Settings(
        _env_file=None, broker_url=broker_url, storage_roots=[str(tmp_path)]
    )
    client = redis.Redis.from_url(broker_url)
    queue = f"q-{os.getpid()}-{time.monotonic_ns()}"
    client.lpush(queue, "a", "b")
    client.lpush(f"{queue}\x06\x166", "c")
    # A message a worker holds, as kombu keeps it: [message, exchange, routing key].
    tag = f"tag-{queue}"
    client.hset("unacked", tag, json.dumps([{"body": "e30="}, queue, queue]))
    store = JobStore.from_settings(settings)
    store.create("images", total=1, options={})
    collector = metrics.BrokerCollector(settings, [queue], store)

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in collector.collect()
        for s in family.samples
    }

    client.delete(*queue_keys(queue))
    client.hdel("unacked", tag)
    assert samples[("batchgrid_queue_length", (("queue", queue),))] == 3
    assert samples[("batchgrid_queue_in_flight", (("queue", queue),))] == 1
    assert samples[("batchgrid_queue_backlog", (("queue", queue),))] == 4
    queued = ("batchgrid_jobs_in_progress", (("kind", "images"), ("state", "queued")))
    assert samples[queued] >= 1


def test_serve_worker_metrics_when_the_port_is_taken_logs_and_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = Settings(_env_file=None, metrics_port=port)
        worker = metrics.WorkerCollector("w@n", queues=[], pool_processes=1)

        served = metrics.serve_worker_metrics(
            settings, path=tmp_path, worker=worker, store=None
        )

    assert served is False
    assert "BATCHGRID_METRICS_PORT" in caplog.text


def _remove_worker_series(worker: str) -> None:
    """Drop every series of ``worker`` from this process's registry: the producer's
    /metrics in later tests serves the same registry."""
    for metric in (
        metrics.QUEUE_WAIT,
        metrics.TASK_RUNTIME,
        metrics.TASKS,
        metrics.ITEMS_PROCESSED,
        metrics.ITEM_ERRORS,
    ):
        names = list(metric._labelnames)
        for labels in {
            tuple(sample.labels[name] for name in names)
            for family in metric.collect()
            for sample in family.samples
            if sample.labels.get("worker") == worker
        }:
            metric.remove(*labels)


def _worker_samples(
    metric: Any, worker: str, suffix: str
) -> dict[tuple[str, ...], float]:
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in metric.collect()
        for sample in family.samples
        if sample.labels.get("worker") == worker and sample.name.endswith(suffix)
    }


@pytest.fixture
def worker_name(request: pytest.FixtureRequest) -> Iterator[str]:
    """A worker label of the test's own, whose series are removed after it."""
    name = f"{request.node.name[:40]}@test"
    yield name
    _remove_worker_series(name)


def test_zero_worker_series_when_ready_creates_only_the_consumed_queues_tasks(
    worker_name: str,
) -> None:
    settings = Settings(
        _env_file=None,
        broker_url="redis://127.0.0.1:1/0",
        images_queue="zero-images",
        tables_queue="zero-tables",
    )
    app = create_app(settings)

    created = metrics.zero_worker_series(app, worker_name, ["zero-images"])

    waits = {
        (dict(labels)["task"], dict(labels)["queue"]): value
        for labels, value in _worker_samples(
            metrics.QUEUE_WAIT, worker_name, "_count"
        ).items()
    }
    assert waits == {
        ("batchgrid.images.convert", "zero-images"): 0.0,
        ("batchgrid.images.finish", "zero-images"): 0.0,
    }
    assert created == 2
    outcomes = _worker_samples(metrics.TASKS, worker_name, "_total")
    assert len(outcomes) == 2 * len(metrics.OUTCOMES)
    assert set(outcomes.values()) == {0.0}
    reasons = {
        dict(labels)["reason"]
        for labels in _worker_samples(metrics.ITEM_ERRORS, worker_name, "_total")
    }
    assert reasons == set(metrics.ITEM_ERROR_REASONS) - {"malformed_row"}


def test_item_error_reasons_when_tasks_or_imaging_emit_one_list_it() -> None:
    package = Path(metrics.__file__).parent
    source = (package / "tasks.py").read_text() + (package / "imaging.py").read_text()

    emitted = set(re.findall(r'(?:_error|ImageError)\(\s*"(\w+)"', source))

    assert {"empty", "out_of_memory", "worker_lost", "time_limit"} <= emitted
    assert emitted <= set(metrics.ITEM_ERROR_REASONS), emitted - set(
        metrics.ITEM_ERROR_REASONS
    )


def test_count_items_when_a_range_had_malformed_rows_counts_them_by_reason(
    worker_name: str,
) -> None:
    metrics._count_items(
        TASK_NAMES["aggregate_range"],
        {"index": 0, "rows": 10, "bytes": 99, "malformed_rows": 3},
        "n1",
        worker_name,
    )

    errors = _worker_samples(metrics.ITEM_ERRORS, worker_name, "_total")
    assert list(errors.values()) == [3.0]
    assert dict(next(iter(errors)))["reason"] == "malformed_row"
    processed = _worker_samples(metrics.ITEMS_PROCESSED, worker_name, "_total")
    assert sorted(processed.values()) == [10.0, 99.0]
