"""Watch a batchgrid release scale with its load (``make autoscale-demo``).

Everything is read through the Kubernetes API with the ``kubernetes`` client, so
no port-forward is needed: worker replicas per Deployment, each queue's backlog
from the producer (``GET /queues`` through the API server's service proxy) and
the p95 task runtime per node from Prometheus (service proxy too). The live table
runs until the fleet is back to its minimum, then a PNG timeline is written::

    batchgrid autoscale-watch --namespace batchgrid --png k8s/out/autoscale.png
"""

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from batchgrid.errors import ConfigError
from batchgrid.timeline import Sample, write_timeline
from batchgrid.top import Snapshot, prometheus_snapshot, render

__all__ = ["KubeSource", "Reading", "settled", "watch"]

#: A read through the API server that takes longer is reported, not waited for.
REQUEST_TIMEOUT_S = 5.0


def _api_errors() -> tuple[type[Exception], ...]:
    """What the Kubernetes client raises when the cluster does not answer."""
    try:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError
    except ImportError:  # no kube extra: KubeSource says so itself
        return (OSError,)
    return (ApiException, HTTPError, OSError)


_API_ERRORS = _api_errors()


def _describe(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    return f"{status} {getattr(exc, 'reason', '')}".strip() if status else str(exc)


@dataclass
class Reading:
    """One look at the release: replicas (ready, desired) and backlog per queue."""

    at_s: float
    replicas: dict[str, tuple[int, int]] = field(default_factory=dict)
    waiting: dict[str, int] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)
    latency: Snapshot | None = None
    errors: list[str] = field(default_factory=list)

    def sample(self) -> Sample:
        """The reading as a point of the PNG timeline."""
        nodes = self.latency.nodes if self.latency else {}
        return Sample(
            self.at_s,
            {queue: desired for queue, (_, desired) in self.replicas.items()},
            dict(self.waiting),
            dict(self.in_flight),
            {
                node: p95
                for node, stats in nodes.items()
                if node and (p95 := stats.runtime_s.get(0.95)) is not None
            },
        )


class KubeSource:
    """Reads a release's workers, queues and latency through the Kubernetes API.

    ``release`` is the Helm release name; ``prometheus`` is
    ``namespace/service:port`` of a Prometheus server (the kind
    demo's kube-prometheus-stack), or None to show no latency; ``context`` is a
    kubeconfig context (None: the current one) of ``kubeconfig`` (None: $KUBECONFIG,
    else ~/.kube/config).
    """

    def __init__(
        self,
        namespace: str,
        release: str,
        prometheus: str | None = None,
        context: str | None = None,
        kubeconfig: Path | None = None,
    ) -> None:
        try:
            from kubernetes import client, config
        except ImportError as exc:
            raise ConfigError(
                "autoscale-watch needs the Kubernetes client: "
                "pip install 'batchgrid[kube]'"
            ) from exc
        if prometheus is not None and not re.fullmatch(r"[^/\s]+/[^/\s]+", prometheus):
            raise ConfigError(
                f"--prometheus {prometheus!r}: expected namespace/service:port, "
                "for example monitoring/prometheus-operated:9090, or '' for none"
            )
        try:
            config.load_kube_config(
                config_file=str(kubeconfig) if kubeconfig else None, context=context
            )
        except (config.ConfigException, OSError) as exc:
            raise ConfigError(
                f"no usable kubeconfig context {context or '(current)'}: {exc}; "
                "create the demo cluster with `make kind-up` or pass --context"
            ) from exc
        self.api = client.ApiClient()
        self.apps = client.AppsV1Api(self.api)
        self.namespace = namespace
        self.release = release
        # The chart's object-name prefix (batchgrid.fullname, no override).
        self.fullname = release if "batchgrid" in release else f"{release}-batchgrid"
        self.prometheus = prometheus

    def _proxy(self, namespace: str, service: str, path: str, **query: str) -> Any:
        """GET a path of a Service through the API server's proxy, as JSON."""
        try:
            # Without preloading, the client returns the urllib3 response itself.
            response = self.api.call_api(
                f"/api/v1/namespaces/{namespace}/services/{service}/proxy/{path}",
                "GET",
                query_params=list(query.items()),
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        except _API_ERRORS as exc:
            raise OSError(f"{service}: {_describe(exc)}") from exc
        try:
            return json.loads(response.data)
        finally:
            response.release_conn()

    def read(self, at_s: float) -> Reading:
        """One reading; what does not answer is listed in ``errors``, not raised."""
        reading = Reading(at_s)
        prefix = f"{self.fullname}-worker-"
        try:
            deployments = self.apps.list_namespaced_deployment(
                self.namespace,
                label_selector="app.kubernetes.io/name=batchgrid,"
                f"app.kubernetes.io/instance={self.release}",
                _request_timeout=REQUEST_TIMEOUT_S,
            )
        except _API_ERRORS as exc:
            reading.errors.append(f"deployments: {_describe(exc)}")
            return reading
        for deployment in deployments.items:
            name = deployment.metadata.name
            if name.startswith(prefix):
                reading.replicas[name.removeprefix(prefix)] = (
                    deployment.status.ready_replicas or 0,
                    deployment.spec.replicas or 0,
                )
        try:
            queues = self._proxy(
                self.namespace, f"{self.fullname}-producer:http", "queues"
            )
            for entry in queues:
                reading.waiting[entry["queue"]] = entry["waiting"]
                reading.in_flight[entry["queue"]] = entry["in_flight"]
        except (OSError, ValueError, KeyError) as exc:
            reading.errors.append(f"producer: {exc}")
        if self.prometheus:
            namespace, service = self.prometheus.split("/", 1)

            def query(expr: str) -> dict[str, Any]:
                body: dict[str, Any] = self._proxy(
                    namespace, service, "api/v1/query", query=expr
                )
                return body

            reading.latency = prometheus_snapshot(query, where=self.prometheus)
        return reading


def settled(reading: Reading, min_replicas: int) -> bool:
    """Whether the fleet is back to its minimum with nothing left to do."""
    return (
        not reading.errors
        and all(desired <= min_replicas for _, desired in reading.replicas.values())
        and not any(reading.waiting.values())
        and not any(reading.in_flight.values())
    )


def render_reading(reading: Reading) -> Group:
    """Replicas and backlog per queue, then the per-node latency table."""
    table = Table(title=f"workers at {reading.at_s:.0f} s", title_justify="left")
    for column in ("queue", "ready", "desired", "waiting", "in flight"):
        table.add_column(column, justify="left" if column == "queue" else "right")
    for queue in sorted(set(reading.replicas) | set(reading.waiting)):
        ready, desired = reading.replicas.get(queue, (0, 0))
        table.add_row(
            queue,
            str(ready),
            str(desired),
            str(reading.waiting.get(queue, "-")),
            str(reading.in_flight.get(queue, "-")),
        )
    parts: list[Any] = [table]
    if reading.latency is not None:
        parts.append(render(reading.latency).renderables[1])
        parts += [f"[yellow]{error}" for error in reading.latency.errors]
    parts += [f"[yellow]unreachable: {error}" for error in reading.errors]
    return Group(*parts)


def watch(
    read: Callable[[float], Reading],
    *,
    console: Console,
    min_replicas: int,
    interval_s: float,
    timeout_s: float,
    png: Path | None,
    settle_s: float = 30.0,
) -> tuple[list[Reading], bool]:
    """Show readings until the load has come and the fleet is back to its minimum.

    The load counts as come once a backlog (waiting or in flight) has been seen,
    and answered once, with or after it, some queue wanted more workers than its
    minimum; the fleet counts as back once it has stayed settled for ``settle_s``,
    so a quiet moment between two jobs does not end the watch. Returns the
    readings and whether all that happened before ``timeout_s``; writes the
    timeline to ``png`` either way.
    """
    started = time.monotonic()
    readings: list[Reading] = []
    loaded = scaled = done = False
    settled_since_s: float | None = None
    with Live(console=console, auto_refresh=False) as live:
        while time.monotonic() - started < timeout_s:
            reading = read(time.monotonic() - started)
            readings.append(reading)
            live.update(render_reading(reading), refresh=True)
            loaded = (
                loaded
                or any(reading.waiting.values())
                or any(reading.in_flight.values())
            )
            scaled = scaled or (
                loaded
                and any(
                    desired > min_replicas for _, desired in reading.replicas.values()
                )
            )
            if not (loaded and scaled and settled(reading, min_replicas)):
                settled_since_s = None
            elif settled_since_s is None:
                settled_since_s = reading.at_s
            if settled_since_s is not None and (
                reading.at_s - settled_since_s >= settle_s
            ):
                done = True
                break
            time.sleep(interval_s)
    if png is not None:
        write_timeline([reading.sample() for reading in readings], png)
        console.print(f"timeline: {png}")
    return readings, done
