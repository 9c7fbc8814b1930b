"""The load generator and periodic jobs (RedBeat), with real workers."""

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from batchgrid.cli import _DirectSubmitter
from batchgrid.loadgen import make_request_factory, run_load
from tests.conftest import Cluster

pytestmark = pytest.mark.integration


def test_loadgen_at_a_steady_rate_submits_every_job_and_reports_latency(
    cluster: Cluster, workspace: Path
) -> None:
    request_for = make_request_factory(workspace, "tables")
    submitter = _DirectSubmitter(cluster.settings, cluster.store)

    report = run_load(submitter, request_for, rate_per_s=4, duration_s=1.5)

    assert report.submitted == 6
    assert report.succeeded == 6
    assert report.failed == report.unfinished == 0
    assert report.p50_s is not None and report.p95_s is not None
    assert 0 < report.p50_s <= report.p95_s


def test_loadgen_images_in_a_burst_converts_every_image(
    cluster: Cluster, workspace: Path
) -> None:
    request_for = make_request_factory(workspace, "images")
    submitter = _DirectSubmitter(cluster.settings, cluster.store)

    report = run_load(submitter, request_for, rate_per_s=3, duration_s=1, burst=True)

    assert (report.submitted, report.succeeded) == (3, 3)
    outputs = list((workspace / "loadgen" / "out").rglob("*.jpg"))
    assert len(outputs) == 3 * 8


def _start_beat(
    cluster: Cluster, schedule: list[dict[str, object]], heartbeat: Path
) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHGRID_")}
    env |= {
        "BATCHGRID_BROKER_URL": cluster.settings.broker_url or "",
        "BATCHGRID_STORAGE_ROOTS": str(cluster.root),
        "BATCHGRID_SCHEDULE": json.dumps(schedule),
        "BATCHGRID_BEAT_LOCK_TIMEOUT_S": "5",
        "BATCHGRID_HEARTBEAT_FILE": str(heartbeat),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "batchgrid", "beat"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def test_beat_with_two_replicas_fires_once_per_period(
    cluster: Cluster, workspace: Path
) -> None:
    csv = workspace / "tick.csv"
    csv.write_text("k,v\na,1\nb,2\n")
    name = f"tick-{workspace.name[-20:]}"
    schedule = [
        {
            "name": name,
            "kind": "tables",
            "every_s": 2,
            "params": {"csv": str(csv), "by": ["k"], "values": ["v"]},
        }
    ]
    heartbeats = [workspace / "beat-0.alive", workspace / "beat-1.alive"]
    beats = [_start_beat(cluster, schedule, path) for path in heartbeats]
    try:
        time.sleep(11)
        ticking = [path for path in heartbeats if path.exists()]
        age_s = time.time() - ticking[0].stat().st_mtime if ticking else None
    finally:
        for beat in beats:
            beat.send_signal(signal.SIGTERM)
        for beat in beats:
            beat.wait(timeout=30)

    records = [cluster.store.get(job_id) for job_id in cluster.store.recent(limit=200)]
    ours = [r for r in records if r.options.get("origin") == f"schedule:{name}"]
    fired = sorted(r.created_at for r in ours)
    gaps = [later - earlier for earlier, later in itertools.pairwise(fired)]
    assert 3 <= len(fired) <= 6, fired
    assert min(gaps) > 1.5, gaps
    # Only the beat holding the lock ticks; it touched its file a moment ago.
    assert len(ticking) == 1 and age_s is not None and age_s < 6, (ticking, age_s)
    assert {r.state for r in ours} <= {"succeeded", "running", "queued"}
