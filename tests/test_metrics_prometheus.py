"""A real Prometheus on loopback scrapes a real worker and the producer while two
jobs run; celery-exporter reads the same broker; ``batchgrid top`` reads the worker.

The worker runs 4 pool processes replaced every 3 tasks, so the counts below also
prove the multiprocess bookkeeping: each task is counted once, however many
processes came and went. Prometheus and promtool come from Debian's package and
celery-exporter from its own virtualenv, both installed by ``tests/setup_tools.sh``.
"""

import contextlib
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from batchgrid.jobs import JobStore
from batchgrid.local import LocalWorkers
from batchgrid.settings import Settings
from tests.conftest import ApiServer, make_settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).parent.parent
FILES = REPO / "charts" / "batchgrid" / "files"
EXPORTER_PYTHON = REPO / ".tools" / "celery-exporter-venv" / "bin" / "python"
#: Rows of the CSV and bytes per range: about 20 range tasks.
ROWS, CHUNK_BYTES = 3000, 1500
#: Images per task (6 images, one broken: 3 tasks).
IMAGES_PER_TASK = 2
#: The node label the worker gets from its environment.
NODE = "test-node-1"
#: How long the tests wait for scrapes and answers.
WAIT_S = 30.0


def need(path: str | None, what: str) -> str:
    if path is None or not Path(path).exists():
        message = f"{what} is missing; run tests/setup_tools.sh (make test does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def total(text: str, metric: str, /, **labels: str) -> float:
    return sum(
        value
        for sample_name, sample_labels, value in samples(text)
        if sample_name == metric
        and all(sample_labels.get(k) == v for k, v in labels.items())
    )


def wait_until(check: object, what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if callable(check) and check():
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.25)


@dataclass
class Observed:
    """Everything the tests look at, after both jobs ended."""

    settings: Settings
    root: Path
    worker_url: str
    api_url: str
    prometheus_url: str
    exporter_url: str
    metrics_dir: Path
    ranges: int
    image_tasks: int
    job_seconds: float


def _inputs(root: Path) -> tuple[Path, Path]:
    csv = root / "table.csv"
    csv.write_text("k,v\n" + "".join(f"g{i % 7},{i}\n" for i in range(ROWS)))
    photos = root / "photos"
    photos.mkdir()
    for index in range(5):
        Image.new("RGB", (64, 48), (index * 40, 90, 200)).save(photos / f"p{index}.png")
    (photos / "broken.jpg").write_text("not a picture")
    return csv, photos


def _start_prometheus(
    root: Path, port: int, targets: dict[str, str]
) -> subprocess.Popen[bytes]:
    binary = need(shutil.which("prometheus"), "prometheus")
    config = {
        "global": {
            "scrape_interval": "1s",
            "scrape_timeout": "1s",
            "evaluation_interval": "1s",
        },
        "rule_files": [str(FILES / "prometheus-rules.yaml")],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target]}]}
            for job, target in targets.items()
        ],
    }
    path = root / "prometheus.yml"
    path.write_text(json.dumps(config))  # JSON is YAML
    with (root / "prometheus.log").open("ab") as log:
        return subprocess.Popen(
            [
                binary,
                f"--config.file={path}",
                f"--storage.tsdb.path={root / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def _start_exporter(
    broker_url: str, port: int, queues: list[str], log: Path
) -> subprocess.Popen[bytes]:
    python = need(str(EXPORTER_PYTHON), "celery-exporter")
    with log.open("ab") as output:
        return subprocess.Popen(
            [
                python,
                "-c",
                "from src.cli import cli; cli()",
                f"--broker-url={broker_url}",
                "--host=127.0.0.1",
                f"--port={port}",
                f"--queues={','.join(queues)}",
                "--log-level=WARNING",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _wait_job(store: JobStore, job_id: str) -> None:
    wait_until(lambda: store.get(job_id).finished, f"job {job_id}", timeout_s=120)
    assert store.get(job_id).state == "succeeded", store.get(job_id)


@pytest.fixture(scope="module")
def observed(
    tmp_path_factory: pytest.TempPathFactory, broker_url: str
) -> Iterator[Observed]:
    root = tmp_path_factory.mktemp("metrics")
    csv, photos = _inputs(root)
    queues = [f"metrics-images-{os.getpid()}", f"metrics-tables-{os.getpid()}"]
    worker_port, prometheus_port, exporter_port = free_port(), free_port(), free_port()
    settings = make_settings(
        root,
        broker_url,
        images_queue=queues[0],
        tables_queue=queues[1],
        metrics_port=worker_port,
        task_events=True,
        image_batch_max_items=IMAGES_PER_TASK,
    )
    metrics_dir = root / ".metrics"
    workers = LocalWorkers(
        settings,
        count=1,
        concurrency=4,
        log_dir=root / ".logs",
        extra_env={
            "BATCHGRID_IMAGES_QUEUE": queues[0],
            "BATCHGRID_TABLES_QUEUE": queues[1],
            "BATCHGRID_MAX_TASKS_PER_CHILD": "3",
            "BATCHGRID_TASK_EVENTS": "true",
            "BATCHGRID_METRICS_DIR": str(metrics_dir),
            "NODE_NAME": NODE,
        },
    )
    worker_url = f"http://127.0.0.1:{worker_port}/metrics"
    exporter_url = f"http://127.0.0.1:{exporter_port}/metrics"
    prometheus_url = f"http://127.0.0.1:{prometheus_port}"
    with contextlib.ExitStack() as stack:
        # Checked first, so a missing tool skips before anything starts.
        need(shutil.which("prometheus"), "prometheus")
        need(str(EXPORTER_PYTHON), "celery-exporter")
        workers.start()
        stack.callback(workers.stop, 30)
        exporter = _start_exporter(
            broker_url, exporter_port, queues, root / "exporter.log"
        )
        stack.callback(_stop, exporter)
        api_url = stack.enter_context(ApiServer(settings))
        prometheus = _start_prometheus(
            root,
            prometheus_port,
            {
                "batchgrid-worker": f"127.0.0.1:{worker_port}",
                "batchgrid-producer": api_url.removeprefix("http://"),
            },
        )
        stack.callback(_stop, prometheus)
        wait_until(lambda: httpx.get(worker_url).status_code == 200, "worker metrics")
        # The exporter has its event receiver running once it saw a worker heartbeat.
        wait_until(
            lambda: "celery_worker_up{" in httpx.get(exporter_url, timeout=10).text,
            "celery-exporter to see the worker",
        )
        wait_until(
            lambda: httpx.get(f"{prometheus_url}/-/ready").status_code == 200,
            "prometheus",
        )
        # Prometheus scrapes a new target only after its discovery settles (about
        # 5 s): rates need a baseline scrape of both targets before the jobs.
        wait_until(
            lambda: scalar_at(prometheus_url, "count(up == 1)") == 2,
            "prometheus to scrape the worker and the producer",
        )
        time.sleep(2)

        started = time.monotonic()
        table = httpx.post(
            f"{api_url}/jobs/tables",
            json={
                "csv": str(csv),
                "by": ["k"],
                "values": ["v"],
                "chunk_bytes": CHUNK_BYTES,
            },
        )
        images = httpx.post(
            f"{api_url}/jobs/images",
            json={"sources": [str(photos)], "destination": str(root / "gray")},
        )
        assert table.status_code == images.status_code == 201, (table.text, images.text)
        store = JobStore.from_settings(settings)
        _wait_job(store, table.json()["id"])
        _wait_job(store, images.json()["id"])
        job_seconds = time.monotonic() - started
        ranges = store.get(table.json()["id"]).total

        yield Observed(
            settings=settings,
            root=root,
            worker_url=worker_url,
            api_url=api_url,
            prometheus_url=prometheus_url,
            exporter_url=exporter_url,
            metrics_dir=metrics_dir,
            ranges=ranges,
            image_tasks=math.ceil(6 / IMAGES_PER_TASK),
            job_seconds=job_seconds,
        )
        store.close()


def query_at(prometheus_url: str, expr: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{prometheus_url}/api/v1/query", params={"query": expr}, timeout=10
    )
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def scalar_at(prometheus_url: str, expr: str) -> float | None:
    result = query_at(prometheus_url, expr)
    return float(result[0]["value"][1]) if result else None


def query(observed: Observed, expr: str) -> list[dict[str, Any]]:
    return query_at(observed.prometheus_url, expr)


def scalar(observed: Observed, expr: str) -> float | None:
    return scalar_at(observed.prometheus_url, expr)


AGGREGATE = "batchgrid.tables.aggregate_range"
CONVERT = "batchgrid.images.convert"
FINISH = "batchgrid.tables.finish"


def test_worker_scrape_after_the_jobs_counts_each_task_once(observed: Observed) -> None:
    text = httpx.get(observed.worker_url).text

    def count(metric: str, /, **labels: str) -> float:
        return total(text, metric, **labels)

    assert (
        count("batchgrid_tasks_total", task=AGGREGATE, outcome="succeeded")
        == observed.ranges
    )
    assert (
        count("batchgrid_tasks_total", task=CONVERT, outcome="succeeded")
        == observed.image_tasks
    )
    assert (
        count("batchgrid_task_queue_wait_seconds_count", task=AGGREGATE)
        == observed.ranges
    )
    assert (
        count("batchgrid_task_runtime_seconds_count", task=AGGREGATE) == observed.ranges
    )
    assert count("batchgrid_items_processed_total", unit="rows") == ROWS
    assert count("batchgrid_items_processed_total", unit="images") == 6
    assert count("batchgrid_item_errors_total", reason="unidentified") == 1
    assert count("batchgrid_item_errors_total") == 1
    assert (
        count("batchgrid_job_duration_seconds_count", kind="tables", state="succeeded")
        == 1
    )
    assert (
        count("batchgrid_job_duration_seconds_count", kind="images", state="succeeded")
        == 1
    )
    assert count("batchgrid_worker_pool_processes", node=NODE) == 4
    assert observed.ranges >= 15


#: Every label batchgrid's own series may carry: each takes a bounded set of values
#: (task names, queues, nodes, outcomes, reasons), never job ids, files or pids.
BOUNDED_LABELS = {
    "task",
    "queue",
    "node",
    "worker",
    "outcome",
    "reason",
    "unit",
    "kind",
    "state",
    "origin",
    "le",
    "quantile",
}


@pytest.mark.parametrize("target", ["worker", "producer"])
def test_scrapes_carry_only_bounded_labels(observed: Observed, target: str) -> None:
    url = observed.worker_url if target == "worker" else f"{observed.api_url}/metrics"

    text = httpx.get(url, timeout=10).text
    labels = {
        name
        for family in text_string_to_metric_families(text)
        if family.name.startswith("batchgrid_")
        for sample in family.samples
        for name in sample.labels
    }

    assert labels, "no batchgrid series scraped"
    assert labels <= BOUNDED_LABELS, labels - BOUNDED_LABELS
    values = {
        value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("batchgrid_")
        for sample in family.samples
        for value in sample.labels.values()
    }
    # No job ids (32 hex digits), task ids (uuids) or paths among the values.
    unbounded = {v for v in values if re.search(r"[0-9a-f]{32}|[0-9a-f-]{36}|/", v)}
    assert not unbounded, unbounded


def test_worker_metrics_folder_when_pool_processes_recycle_stays_small(
    observed: Observed,
) -> None:
    httpx.get(observed.worker_url)  # a scrape folds exited processes' files

    files = sorted(f.name for f in observed.metrics_dir.rglob("*.db"))

    # Far more pool processes ran (every 3 tasks) than files remain: one archive per
    # kind, plus the files of the processes alive now.
    assert "counter_archive.db" in files and "histogram_archive.db" in files
    assert len(files) <= 2 + 2 * (4 + 1)


def test_worker_queue_wait_counts_the_time_tasks_spent_queued(
    observed: Observed,
) -> None:
    text = httpx.get(observed.worker_url).text

    waited = total(text, "batchgrid_task_queue_wait_seconds_sum", task=AGGREGATE)
    quick = total(
        text, "batchgrid_task_queue_wait_seconds_bucket", task=AGGREGATE, le="0.25"
    )

    # Every range task was published at submission and waited its turn on 4 pool
    # processes, which are replaced every 3 tasks: measured from the publish time
    # in each message, some waits are long, and none exceeds the jobs' duration.
    assert quick < observed.ranges
    assert 0 < waited <= observed.ranges * observed.job_seconds


def test_prometheus_scraped_task_count_equals_the_tasks_the_job_ran(
    observed: Observed,
) -> None:
    ran = f'sum(batchgrid_tasks_total{{task="{AGGREGATE}", outcome="succeeded"}})'

    wait_until(lambda: scalar(observed, ran) == observed.ranges, "the final scrape")

    # The producer published one task per range; the worker ran each once. A job's
    # callback may be sent twice (the chord and the last task both send it; the
    # job finishes once): each one sent ran once.
    # The producer is this test process, which other tests' jobs share: by queue.
    queue = observed.settings.tables_queue
    sent = (
        f'sum(batchgrid_tasks_published_total{{task="{AGGREGATE}", queue="{queue}"}})'
    )
    finished = f'sum(batchgrid_tasks_total{{task="{FINISH}", outcome="succeeded"}})'
    finish_sent = (
        f'sum(batchgrid_tasks_published_total{{task="{FINISH}", queue="{queue}"}})'
    )
    # The two targets are scraped at their own moments: wait for the producer's.
    wait_until(lambda: scalar(observed, sent) == observed.ranges, "the producer's")
    assert scalar(observed, ran) == scalar(observed, sent) == observed.ranges
    # A second callback may still be on its way when the ranges are all counted.
    wait_until(
        lambda: scalar(observed, finished) == scalar(observed, finish_sent),
        "every callback sent to run",
    )
    assert (scalar(observed, finish_sent) or 0) >= 1


def test_prometheus_answers_every_dashboard_panel(observed: Observed) -> None:
    dashboard = json.loads((FILES / "grafana-dashboard.json").read_text())
    exprs = {
        f"{panel['title']} [{target['refId']}]": target["expr"].replace(
            "$__rate_interval", "5m"
        )
        for panel in dashboard["panels"]
        for target in panel["targets"]
    }
    empty: dict[str, str] = {}

    def all_answer() -> bool:
        empty.clear()
        empty.update({name: e for name, e in exprs.items() if not query(observed, e)})
        return not empty

    with contextlib.suppress(AssertionError):
        wait_until(all_answer, "every panel's query")

    assert empty == {}
    p95 = exprs["Queue wait per node (p50 / p95 / p99) [B]"]
    wait_p95 = query(observed, p95)
    assert [row["metric"] for row in wait_p95] == [{"node": NODE}]

    # NaN until Prometheus holds two scrapes that span the jobs' increase.
    def finite() -> bool:
        rows = query(observed, p95)
        return bool(rows) and math.isfinite(float(rows[0]["value"][1]))  # type: ignore[index]

    wait_until(finite, "a finite p95 queue wait")


def test_prometheus_loads_the_alert_rules_and_they_evaluate(observed: Observed) -> None:
    body = httpx.get(f"{observed.prometheus_url}/api/v1/rules").json()

    rules = [rule for group in body["data"]["groups"] for rule in group["rules"]]

    assert {rule["name"] for rule in rules if rule["type"] == "alerting"} == {
        "BatchgridBacklogGrowing",
        "BatchgridTaskFailureRatioHigh",
        "BatchgridQueueWaitHigh",
        "BatchgridNoWorkers",
    }
    wait_until(
        lambda: all(
            rule.get("health") == "ok"
            for group in httpx.get(f"{observed.prometheus_url}/api/v1/rules").json()[
                "data"
            ]["groups"]
            for rule in group["rules"]
        ),
        "every rule to evaluate",
    )
    firing = query(observed, 'ALERTS{alertname=~"Batchgrid.*"}')
    assert firing == []


def test_celery_exporter_reports_queue_length_and_task_counts(
    observed: Observed,
) -> None:
    text = httpx.get(observed.exporter_url, timeout=15).text

    tables = observed.settings.tables_queue
    assert total(text, "celery_task_succeeded_total", name=AGGREGATE) == observed.ranges
    assert (
        total(text, "celery_task_succeeded_total", name=CONVERT) == observed.image_tasks
    )
    lengths = [
        value
        for name, labels, value in samples(text)
        if name == "celery_queue_length" and labels.get("queue_name") == tables
    ]
    assert lengths == [0.0]


def test_top_once_shows_queues_and_node_latency(observed: Observed) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "batchgrid",
            "top",
            "--once",
            "--metrics",
            observed.worker_url,
            "--metrics",
            f"{observed.api_url}/metrics",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )

    succeeded = total(
        httpx.get(observed.worker_url).text,
        "batchgrid_tasks_total",
        outcome="succeeded",
    )
    assert result.returncode == 0, result.stderr
    assert observed.settings.tables_queue in result.stdout
    node_row = next(line for line in result.stdout.splitlines() if NODE in line)
    assert f" {succeeded:.0f} " in node_row
    assert succeeded >= observed.ranges + observed.image_tasks + 2
    assert " ms" in node_row or " s" in node_row


def test_top_once_reads_prometheus(observed: Observed) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "batchgrid",
            "top",
            "--once",
            "--prometheus",
            observed.prometheus_url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )

    assert result.returncode == 0, result.stderr
    assert NODE in result.stdout
    assert observed.settings.images_queue in result.stdout
