"""The autoscale watcher's stopping rule, table and timeline, on scripted readings.

Scripted readings stand in for a cluster, and a loopback HTTP server for the
Kubernetes API server (none runs here); tests/test_kind_e2e.py runs the watcher
against a real kind cluster when one is reachable.
"""

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from PIL import Image
from rich.console import Console

from batchgrid.errors import ConfigError
from batchgrid.kube import KubeSource, Reading, render_reading, settled, watch


def _reading(at_s: float, replicas: int, waiting: int, in_flight: int) -> Reading:
    return Reading(
        at_s,
        replicas={"images": (replicas, replicas)},
        waiting={"images": waiting},
        in_flight={"images": in_flight},
    )


def test_settled_only_with_minimum_replicas_and_nothing_in_flight() -> None:
    assert settled(_reading(0, 0, 0, 0), min_replicas=0)
    assert not settled(_reading(0, 0, 0, 1), min_replicas=0)
    assert not settled(_reading(0, 2, 0, 0), min_replicas=0)
    unreachable = _reading(0, 0, 0, 0)
    unreachable.errors.append("producer: 503")
    assert not settled(unreachable, min_replicas=0)


def test_watch_waits_for_the_load_then_stops_once_settled_at_the_minimum(
    tmp_path: Path,
) -> None:
    script = [
        _reading(0, 0, 0, 0),  # idle before the load: not the end
        _reading(1, 2, 0, 0),  # woken by something else, no backlog: not the load
        _reading(2, 0, 0, 0),
        _reading(3, 0, 12, 0),
        _reading(4, 3, 6, 3),
        _reading(5, 3, 0, 3),  # the list is empty, the fleet still busy
        _reading(6, 0, 0, 0),  # a quiet moment between two jobs
        _reading(7, 2, 4, 0),
        _reading(8, 1, 0, 0),
        _reading(9, 0, 0, 0),
        _reading(10, 0, 0, 0),
        _reading(11, 0, 0, 0),
        _reading(12, 0, 0, 0),
    ]
    console = Console(width=100, record=True)

    readings, done = watch(
        lambda at_s: script.pop(0),
        console=console,
        min_replicas=0,
        interval_s=0,
        timeout_s=30,
        png=tmp_path / "timeline.png",
        settle_s=2,
    )

    assert done
    assert [r.at_s for r in readings] == list(range(12))
    with Image.open(tmp_path / "timeline.png") as png:
        assert png.format == "PNG" and png.width >= 800


def test_watch_when_the_backlog_never_scales_the_fleet_up_does_not_end() -> None:
    # A backlog the minimum fleet drains alone: no proof the scaler works.
    script = [_reading(0, 1, 5, 1), *(_reading(t, 1, 0, 0) for t in range(1, 40))]

    readings, done = watch(
        lambda at_s: script.pop(0) if script else _reading(at_s, 1, 0, 0),
        console=Console(record=True),
        min_replicas=1,
        interval_s=0.005,
        timeout_s=1.5,
        png=None,
        settle_s=2,
    )

    assert not done and len(readings) > 3


def test_watch_gives_up_after_the_timeout(tmp_path: Path) -> None:
    readings, done = watch(
        lambda at_s: _reading(at_s, 2, 5, 2),
        console=Console(record=True),
        min_replicas=0,
        interval_s=0.01,
        timeout_s=0.2,
        png=None,
    )

    assert not done and readings


def test_render_reading_shows_replicas_and_backlog_per_queue() -> None:
    console = Console(width=100, record=True)

    console.print(render_reading(_reading(7, 3, 4, 2)))

    text = console.export_text()
    assert "images" in text and "in flight" in text
    row = next(line for line in text.splitlines() if "images" in line)
    assert row.replace("│", " ").split() == ["images", "3", "3", "4", "2"]


class _FakeApiServer(BaseHTTPRequestHandler):
    """Answers the three reads the watcher makes, as the Kubernetes API would."""

    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        path = self.path.split("?", 1)[0]
        if path == "/apis/apps/v1/namespaces/batchgrid/deployments":
            body: object = {
                "kind": "DeploymentList",
                "apiVersion": "apps/v1",
                "metadata": {},
                "items": [
                    {
                        "metadata": {"name": name},
                        "spec": {"replicas": desired, "selector": {}, "template": {}},
                        "status": {"readyReplicas": ready},
                    }
                    for name, desired, ready in (
                        ("batchgrid-worker-images", 3, 2),
                        ("batchgrid-producer", 1, 1),
                    )
                ],
            }
        elif path.endswith("/services/batchgrid-producer:http/proxy/queues"):
            body = [{"queue": "images", "waiting": 7, "in_flight": 2, "backlog": 9}]
        elif "/services/prometheus-operated:9090/proxy/api/v1/query" in path:
            body = {"status": "success", "data": {"resultType": "vector", "result": []}}
        else:
            self.send_error(404)
            return
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[Path]:
    """A loopback stand-in for the API server, and a kubeconfig that points at it."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeApiServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {
                            "server": f"http://127.0.0.1:{server.server_address[1]}"
                        },
                    }
                ],
                "users": [{"name": "u", "user": {"token": "t0ken"}}],
                "contexts": [
                    {"name": "demo", "context": {"cluster": "c", "user": "u"}}
                ],
                "current-context": "demo",
            }
        )
    )
    try:
        yield kubeconfig
    finally:
        server.shutdown()
        server.server_close()


def test_kube_source_reads_replicas_and_backlog_through_the_api_server(
    api_server: Path,
) -> None:
    _FakeApiServer.seen.clear()

    reading = KubeSource(
        "batchgrid",
        "batchgrid",
        "monitoring/prometheus-operated:9090",
        "demo",
        api_server,
    ).read(1.0)

    assert reading.errors == []
    assert reading.replicas == {"images": (2, 3)}
    assert reading.waiting == {"images": 7} and reading.in_flight == {"images": 2}
    assert reading.latency is not None and reading.latency.errors == []
    assert any("labelSelector=app.kubernetes.io" in p for p in _FakeApiServer.seen)


def test_kube_source_reports_an_unreachable_cluster_instead_of_raising(
    api_server: Path,
) -> None:
    source = KubeSource("elsewhere", "batchgrid", None, "demo", api_server)

    reading = source.read(0.0)

    assert reading.errors and reading.errors[0].startswith("deployments: 404")


def test_kube_source_refuses_a_malformed_prometheus_address(
    api_server: Path,
) -> None:

    with pytest.raises(ConfigError, match="namespace/service:port"):
        KubeSource("batchgrid", "batchgrid", "prometheus:9090", "demo", api_server)


def test_kube_source_names_a_missing_context(api_server: Path) -> None:
    with pytest.raises(ConfigError, match="make kind-up"):
        KubeSource("batchgrid", "batchgrid", None, "no-such-context", api_server)
