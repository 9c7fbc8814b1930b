"""Shared fixtures: a real Redis-protocol server and real Celery worker processes.

The broker is embedded Valkey unless BATCHGRID_TEST_BROKER_URL names another
server (for example the machine's Redis at redis://127.0.0.1:6379/15).
"""

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from batchgrid.celery_app import create_app
from batchgrid.jobs import JobRecord, JobStore
from batchgrid.local import EmbeddedValkey, LocalWorkers
from batchgrid.producer import Producer
from batchgrid.settings import Settings

#: An integration test gives up on a job after this long (the job, not the test).
JOB_TIMEOUT_S = 120.0


@dataclass
class Cluster:
    """A broker, workers and a producer bound to one storage root."""

    settings: Settings
    store: JobStore
    producer: Producer
    root: Path
    workers: LocalWorkers

    def wait(self, job_id: str, timeout_s: float = JOB_TIMEOUT_S) -> JobRecord:
        from batchgrid.cli import wait_for

        record = wait_for(self.store, job_id, timeout_s=timeout_s, quiet=True)
        assert record.finished, f"job {job_id} still {record.state} after {timeout_s} s"
        return record


def make_settings(root: Path, broker_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "broker_url": broker_url,
        "storage_roots": [str(root)],
        "data_dir": root / ".state",
        **overrides,
    }
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def broker_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("BATCHGRID_TEST_BROKER_URL")
    if external:
        yield external
        return
    with EmbeddedValkey(tmp_path_factory.mktemp("valkey")) as server:
        yield server.url


def start_cluster(
    root: Path, broker_url: str, *, workers: int, concurrency: int, **overrides: object
) -> Cluster:
    settings = make_settings(root, broker_url, **overrides)
    local = LocalWorkers(
        settings, count=workers, concurrency=concurrency, log_dir=root / ".logs"
    )
    local.start()
    store = JobStore.from_settings(settings)
    return Cluster(
        settings, store, Producer(settings, create_app(settings), store), root, local
    )


@pytest.fixture(scope="session")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, broker_url: str
) -> Iterator[Cluster]:
    """Two worker processes of two pool processes each, shared by the session."""
    root = tmp_path_factory.mktemp("storage")
    running = start_cluster(root, broker_url, workers=2, concurrency=2)
    yield running
    running.workers.stop()


@pytest.fixture
def workspace(cluster: Cluster, request: pytest.FixtureRequest) -> Path:
    """A fresh folder under the cluster's storage root for one test."""
    path = cluster.root / request.node.name
    path.mkdir()
    return path


def pandas_reference(
    path: Path, *, by: list[str], values: list[str], **read_options: object
) -> dict[tuple[str | None, ...], dict[str, dict[str, float | int | None]]]:
    """Per-group stats computed by pandas alone over the whole file."""
    import pandas as pd

    frame = pd.read_csv(
        path,
        dtype={key: str for key in by},
        **read_options,
    )
    frame.columns = [str(c).strip() for c in frame.columns]
    reference: dict[
        tuple[str | None, ...], dict[str, dict[str, float | int | None]]
    ] = {}
    for key, rows in frame.groupby(by, dropna=False):
        key_tuple = tuple(None if pd.isna(k) else str(k) for k in key)
        stats: dict[str, dict[str, float | int | None]] = {}
        for value in values:
            raw = rows[value]
            numbers = pd.to_numeric(raw, errors="coerce")
            count = int(numbers.count())
            stats[value] = {
                "count": count,
                "sum": float(numbers.sum()) if count else None,
                "mean": float(numbers.sum()) / count if count else None,
                "min": float(numbers.min()) if count else None,
                "max": float(numbers.max()) if count else None,
                "missing": int(raw.isna().sum()),
                "unparseable": int((raw.notna() & numbers.isna()).sum()),
            }
        reference[key_tuple] = stats
    return reference


def assert_matches_reference(
    result: dict[str, object],
    reference: dict[tuple[str | None, ...], dict[str, dict[str, float | int | None]]],
) -> None:
    """Counts, min and max exactly; sums and means to 1e-9 relative."""
    import math

    groups = result["groups"]
    assert isinstance(groups, list)
    got = {tuple(row["key"]): row["stats"] for row in groups}
    assert set(got) == set(reference)
    for key, stats in reference.items():
        for value, want in stats.items():
            have = got[key][value]
            for stat in ("count", "min", "max", "missing", "unparseable"):
                assert have[stat] == want[stat], (key, value, stat)
            for stat in ("sum", "mean"):
                if want[stat] is None:
                    assert have[stat] is None, (key, value, stat)
                else:
                    assert math.isclose(have[stat], want[stat], rel_tol=1e-9), (
                        key,
                        value,
                        stat,
                        have[stat],
                        want[stat],
                    )


class ApiServer:
    """A real uvicorn server on loopback, in a thread of the test process."""

    def __init__(self, settings: Settings) -> None:
        import threading

        import uvicorn

        from batchgrid.api import create_api

        config = uvicorn.Config(
            create_api(settings), host="127.0.0.1", port=0, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="session")
def api_url(cluster: Cluster) -> Iterator[str]:
    """The producer API without auth, bound to the session cluster."""
    with ApiServer(cluster.settings) as url:
        yield url
