"""``batchgrid top``: queue lengths and per-node latency, live in the terminal.

It reads the metrics Prometheus scrapes: the ``/metrics`` of workers and
producers (latency since each worker started), or a Prometheus server (the
last five minutes). Example::

    batchgrid top --metrics http://worker-1:9809/metrics --metrics http://api:8000/metrics
    batchgrid top --prometheus http://prometheus:9090 --once
"""

import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

__all__ = [
    "NodeStats",
    "Snapshot",
    "bucket_quantile",
    "prometheus_snapshot",
    "read_endpoints",
    "read_prometheus",
    "render",
    "run_top",
]

#: A source that does not answer within this long is reported, not waited for.
FETCH_TIMEOUT_S = 5.0
#: The window of rates and quantiles read from Prometheus.
PROMETHEUS_WINDOW = "5m"

_WAIT = "batchgrid_task_queue_wait_seconds"
_RUNTIME = "batchgrid_task_runtime_seconds"


@dataclass
class NodeStats:
    """One node's tasks and latency quantiles (seconds; None when no task ran)."""

    succeeded: float = 0.0
    failed: float = 0.0
    active: float = 0.0
    reserved: float = 0.0
    wait_s: dict[float, float | None] = field(default_factory=dict)
    runtime_s: dict[float, float | None] = field(default_factory=dict)


@dataclass
class Snapshot:
    """What one read of the sources found; ``errors`` names sources that failed."""

    source: str
    queues: dict[str, float] = field(default_factory=dict)
    #: Messages of each queue that workers hold (prefetched or running).
    in_flight: dict[str, float] = field(default_factory=dict)
    nodes: dict[str, NodeStats] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


#: Quantiles shown per node.
QUANTILES = (0.5, 0.95)


def bucket_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The q-quantile of cumulative ``(upper bound, count)`` buckets, interpolated
    linearly inside a bucket as Prometheus's ``histogram_quantile`` does."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    previous_bound, previous_count = 0.0, 0.0
    for index, (bound, count) in enumerate(ordered):
        if count >= rank:
            if math.isinf(bound):
                return ordered[index - 1][0] if index else None
            if count == previous_count:
                return bound
            share = (rank - previous_count) / (count - previous_count)
            return previous_bound + (bound - previous_bound) * share
        previous_bound, previous_count = bound, count
    return None


def _get(client: httpx.Client, url: str, **params: str) -> httpx.Response:
    response = client.get(url, params=params or None)
    response.raise_for_status()
    return response


def read_endpoints(urls: Sequence[str], *, token: str | None = None) -> Snapshot:
    """Read and merge the ``/metrics`` of workers and producers."""
    snapshot = Snapshot(source="since each worker started")
    buckets: dict[tuple[str, str], dict[float, float]] = defaultdict(
        lambda: defaultdict(float)
    )
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(timeout=FETCH_TIMEOUT_S, headers=headers) as client:
        for url in urls:
            try:
                text = _get(client, url).text
            except httpx.HTTPError as exc:
                snapshot.errors.append(f"{url}: {exc}")
                continue
            for family in text_string_to_metric_families(text):
                for sample in family.samples:
                    _take(snapshot, buckets, sample.name, sample.labels, sample.value)
    for (metric, node), counts in buckets.items():
        stats = snapshot.nodes.setdefault(node, NodeStats())
        target = stats.wait_s if metric == _WAIT else stats.runtime_s
        for q in QUANTILES:
            target[q] = bucket_quantile(q, counts.items())
    return snapshot


def _take(
    snapshot: Snapshot,
    buckets: dict[tuple[str, str], dict[float, float]],
    name: str,
    labels: dict[str, str],
    value: float,
) -> None:
    node = labels.get("node", "")
    if name in ("batchgrid_queue_length", "batchgrid_queue_in_flight"):
        queue = labels["queue"]
        # Every worker and producer report the same queue.
        found = snapshot.queues if name.endswith("length") else snapshot.in_flight
        found[queue] = max(found.get(queue, 0.0), value)
    elif name in (f"{_WAIT}_bucket", f"{_RUNTIME}_bucket"):
        metric = name.removesuffix("_bucket")
        buckets[(metric, node)][float(labels["le"])] += value
    elif name == "batchgrid_tasks_total":
        stats = snapshot.nodes.setdefault(node, NodeStats())
        if labels.get("outcome") == "succeeded":
            stats.succeeded += value
        elif labels.get("outcome") == "failed":
            stats.failed += value
    elif name == "batchgrid_worker_tasks":
        stats = snapshot.nodes.setdefault(node, NodeStats())
        if labels.get("state") == "active":
            stats.active += value
        elif labels.get("state") == "reserved":
            stats.reserved += value


def read_prometheus(url: str, *, token: str | None = None) -> Snapshot:
    """Read queue lengths and the last five minutes' latency from Prometheus."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    api = url.rstrip("/") + "/api/v1/query"
    with httpx.Client(timeout=FETCH_TIMEOUT_S, headers=headers) as client:

        def query(expr: str) -> dict[str, Any]:
            body: dict[str, Any] = _get(client, api, query=expr).json()
            return body

        return prometheus_snapshot(query, where=url)


def prometheus_snapshot(
    query: Callable[[str], dict[str, Any]], *, where: str
) -> Snapshot:
    """A snapshot from Prometheus queries; ``query`` answers one expression with
    the body of ``/api/v1/query`` and raises OSError, ValueError or
    ``httpx.HTTPError`` when it cannot."""
    window = PROMETHEUS_WINDOW
    snapshot = Snapshot(source=f"last {window}, from Prometheus")

    def node(labels: dict[str, str]) -> NodeStats:
        return snapshot.nodes.setdefault(labels.get("node", ""), NodeStats())

    queries: list[tuple[str, Callable[[dict[str, str], float], None]]] = [
        (
            "max by (queue) (batchgrid_queue_length)",
            lambda labels, v: snapshot.queues.__setitem__(labels.get("queue", ""), v),
        ),
        (
            "max by (queue) (batchgrid_queue_in_flight)",
            lambda labels, v: snapshot.in_flight.__setitem__(
                labels.get("queue", ""), v
            ),
        ),
        (
            f'sum by (node) (increase(batchgrid_tasks_total{{outcome="succeeded"}}'
            f"[{window}]))",
            lambda labels, v: setattr(node(labels), "succeeded", v),
        ),
        (
            f'sum by (node) (increase(batchgrid_tasks_total{{outcome="failed"}}'
            f"[{window}]))",
            lambda labels, v: setattr(node(labels), "failed", v),
        ),
        (
            'sum by (node) (batchgrid_worker_tasks{state="active"})',
            lambda labels, v: setattr(node(labels), "active", v),
        ),
        (
            'sum by (node) (batchgrid_worker_tasks{state="reserved"})',
            lambda labels, v: setattr(node(labels), "reserved", v),
        ),
    ]
    for metric, attribute in ((_WAIT, "wait_s"), (_RUNTIME, "runtime_s")):
        for q in QUANTILES:
            expr = (
                f"histogram_quantile({q}, sum by (node, le) "
                f"(rate({metric}_bucket[{window}])))"
            )

            def put(
                labels: dict[str, str], v: float, a: str = attribute, q: float = q
            ) -> None:
                getattr(node(labels), a)[q] = None if math.isnan(v) else v

            queries.append((expr, put))
    for expr, put_value in queries:
        try:
            body = query(expr)
        except (httpx.HTTPError, OSError, ValueError) as exc:
            snapshot.errors.append(f"{where}: {exc}")
            break
        for row in body.get("data", {}).get("result", []):
            put_value(row["metric"], float(row["value"][1]))
    return snapshot


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def render(snapshot: Snapshot) -> Group:
    """The queues table and the per-node table of one snapshot."""
    queues = Table(title="queues", title_justify="left")
    queues.add_column("queue")
    queues.add_column("waiting", justify="right")
    queues.add_column("in flight", justify="right")
    for name, length in sorted(snapshot.queues.items()):
        queues.add_row(name, f"{length:.0f}", f"{snapshot.in_flight.get(name, 0):.0f}")
    nodes = Table(title=f"nodes ({snapshot.source})", title_justify="left")
    for column in ("node", "succeeded", "failed", "active", "reserved"):
        nodes.add_column(column, justify="left" if column == "node" else "right")
    for kind in ("wait", "run"):
        for q in QUANTILES:
            nodes.add_column(f"{kind} p{q * 100:.0f}", justify="right")
    for name, stats in sorted(snapshot.nodes.items()):
        if not name:
            continue
        nodes.add_row(
            name,
            f"{stats.succeeded:.0f}",
            f"{stats.failed:.0f}",
            f"{stats.active:.0f}",
            f"{stats.reserved:.0f}",
            *(_seconds(stats.wait_s.get(q)) for q in QUANTILES),
            *(_seconds(stats.runtime_s.get(q)) for q in QUANTILES),
        )
    parts: list[Any] = [queues, nodes]
    parts += [f"[yellow]unreachable: {error}" for error in snapshot.errors]
    return Group(*parts)


def run_top(
    read: Callable[[], Snapshot],
    *,
    console: Console,
    interval_s: float,
    once: bool,
) -> Snapshot:
    """Show snapshots until Ctrl-C (or one, with ``once``); returns the last one."""
    snapshot = read()
    if once:
        console.print(render(snapshot))
        return snapshot
    with Live(render(snapshot), console=console, auto_refresh=False) as live:
        try:
            while True:
                time.sleep(interval_s)
                snapshot = read()
                live.update(render(snapshot), refresh=True)
        except KeyboardInterrupt:
            pass
    return snapshot
