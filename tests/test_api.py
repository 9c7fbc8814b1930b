"""The producer's HTTP API against a real uvicorn server, Valkey and workers."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from batchgrid.api import create_api
from batchgrid.client import ApiClient
from batchgrid.errors import InputError, JobNotFoundError, JobStateError
from batchgrid.schemas import TablesRequest
from tests.conftest import (
    ApiServer,
    Cluster,
    assert_matches_reference,
    pandas_reference,
)

pytestmark = pytest.mark.integration


def _csv(path: Path, rows: int) -> Path:
    lines = ["shop,amount"] + [
        f"s{i % 7},{(i * 37) % 1000 / 4:.2f}" for i in range(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _sample(exposition: str, series: str) -> float:
    """A series' value in a Prometheus text exposition, 0 when it is absent."""
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait(client: httpx.Client, job_id: str, timeout_s: float = 120) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        view = client.get(f"/jobs/{job_id}").json()
        if view["state"] in ("succeeded", "failed", "cancelled"):
            return view
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish in {timeout_s} s")


def test_post_tables_returns_201_with_location_and_result_equals_pandas(
    api_url: str, workspace: Path
) -> None:
    csv = _csv(workspace / "s.csv", 5000)
    client = httpx.Client(base_url=api_url)

    created = client.post(
        "/jobs/tables",
        json={
            "csv": str(csv),
            "by": ["shop"],
            "values": ["amount"],
            "chunk_bytes": 4096,
        },
    )
    view = _wait(client, created.json()["id"])
    result = client.get(f"/jobs/{view['id']}/result")

    assert created.status_code == 201
    assert created.headers["location"] == f"/jobs/{created.json()['id']}"
    assert view["state"] == "succeeded"
    assert view["progress"]["done"] == view["progress"]["total"] > 1
    assert result.status_code == 200
    assert_matches_reference(
        result.json()["result"], pandas_reference(csv, by=["shop"], values=["amount"])
    )


def test_get_job_while_it_runs_shows_progress_moving(
    api_url: str, workspace: Path
) -> None:
    csv = _csv(workspace / "p.csv", 40_000)
    client = httpx.Client(base_url=api_url)
    job_id = client.post(
        "/jobs/tables",
        json={
            "csv": str(csv),
            "by": ["shop"],
            "values": ["amount"],
            "chunk_bytes": 1024,
        },
    ).json()["id"]

    seen = set()
    while (view := client.get(f"/jobs/{job_id}").json())["state"] not in (
        "succeeded",
        "failed",
    ):
        seen.add(view["progress"]["done"])
        time.sleep(0.02)

    assert view["state"] == "succeeded"
    assert len(seen) >= 3, seen


def test_post_images_then_result_lists_each_outcome(
    api_url: str, workspace: Path
) -> None:
    (workspace / "in").mkdir()
    Image.new("RGB", (40, 30), "red").save(workspace / "in" / "a.png")
    (workspace / "in" / "b.jpg").write_bytes(b"\xff\xd8\xff")
    client = httpx.Client(base_url=api_url)

    created = client.post(
        "/jobs/images",
        json={
            "sources": [str(workspace / "in")],
            "destination": str(workspace / "out"),
        },
    )
    view = _wait(client, created.json()["id"])
    body = client.get(f"/jobs/{view['id']}/result").json()

    assert view["progress"] == {"done": 2, "failed": 1, "total": 2}
    assert body["items"]["a.png"]["output"] == "a.png"
    assert body["items"]["b.jpg"]["error"] in ("truncated", "unidentified")


def _long_job(client: httpx.Client, path: Path, *, chunk_bytes: int) -> str:
    """A tables job of 100,000 rows in many small ranges; its id."""
    body = {
        "csv": str(_csv(path, 100_000)),
        "by": ["shop"],
        "values": ["amount"],
        "chunk_bytes": chunk_bytes,
    }
    job_id: str = client.post("/jobs/tables", json=body).json()["id"]
    return job_id


def test_delete_job_while_queued_cancels_it_and_skips_the_rest(
    api_url: str, workspace: Path
) -> None:
    client = httpx.Client(base_url=api_url, timeout=60)
    job_id = _long_job(client, workspace / "long.csv", chunk_bytes=2048)
    durations = 'batchgrid_job_duration_seconds_count{kind="tables",state="cancelled"}'
    before = _sample(client.get("/metrics").text, durations)

    cancelled = client.delete(f"/jobs/{job_id}")
    again = client.delete(f"/jobs/{job_id}")
    time.sleep(2)
    view = client.get(f"/jobs/{job_id}").json()
    after = _sample(client.get("/metrics").text, durations)

    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled"
    assert again.status_code == 409
    assert view["state"] == "cancelled"
    assert view["progress"]["done"] < view["progress"]["total"]
    assert after == before + 1


def test_delete_running_job_revokes_its_queued_tasks_and_lets_running_ones_finish(
    api_url: str, workspace: Path, cluster: Cluster
) -> None:
    client = httpx.Client(base_url=api_url, timeout=60)
    job_id = _long_job(client, workspace / "longer.csv", chunk_bytes=1024)
    deadline = time.monotonic() + 60
    while client.get(f"/jobs/{job_id}").json()["progress"]["done"] == 0:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.02)

    cancelled = client.delete(f"/jobs/{job_id}")
    done_at_cancel = client.get(f"/jobs/{job_id}").json()["progress"]["done"]
    task_ids = list(cluster.store.tasks(job_id))
    keys = [f"celery-task-meta-{task_id}" for task_id in task_ids]
    deadline = time.monotonic() + 60
    while None in (stored := cluster.store._redis.mget(keys)):
        assert time.monotonic() < deadline, "queued tasks were neither run nor dropped"
        time.sleep(0.5)
    states = [json.loads(raw)["status"] for raw in stored]
    view = client.get(f"/jobs/{job_id}").json()

    assert cancelled.status_code == 200 and view["state"] == "cancelled"
    assert len(task_ids) == view["progress"]["total"]
    # Dropped unrun by the workers that heard of the revoke.
    assert states.count("REVOKED") > 0, set(states)
    # What was running when the cancel came still finished and was recorded.
    assert done_at_cancel <= view["progress"]["done"] < view["progress"]["total"]


@pytest.mark.parametrize(
    ("body", "field", "code"),
    [
        ({"csv": "/etc/passwd", "by": ["a"], "values": ["b"]}, "csv", 400),
        ({"csv": "../../etc/passwd", "by": ["a"], "values": ["b"]}, "csv", 400),
        ({"csv": "http://example.com/x.csv", "by": ["a"], "values": ["b"]}, "csv", 400),
        ({"csv": "s.csv", "by": ["nope"], "values": ["amount"]}, "by", 422),
        ({"csv": "s.csv", "by": ["shop"], "values": ["nope"]}, "values", 422),
        ({"csv": "s.csv", "by": [], "values": ["amount"]}, "by", 422),
        ({"csv": "s.csv", "by": ["shop"], "values": ["amount"], "x": 1}, "x", 422),
        (
            {"csv": "s.csv", "by": ["shop"], "values": ["amount"], "chunk_bytes": 0},
            "chunk_bytes",
            422,
        ),
        (
            {"csv": "s.csv", "by": ["shop"], "values": ["amount"], "delimiter": '"'},
            "delimiter",
            400,
        ),
        (
            {
                "csv": "s.csv",
                "by": ["shop"],
                "values": ["amount"],
                "encoding": "utf-16",
            },
            "encoding",
            400,
        ),
        (
            {"csv": "s.csv", "by": ["shop"], "values": ["amount"], "encoding": "nope"},
            "encoding",
            400,
        ),
    ],
)
def test_post_tables_with_bad_input_names_the_field(
    api_url: str, cluster: Cluster, body: dict, field: str, code: int
) -> None:
    _csv(cluster.root / "s.csv", 10)
    if body["csv"] == "s.csv":
        body = {**body, "csv": str(cluster.root / "s.csv")}

    response = httpx.post(f"{api_url}/jobs/tables", json=body)

    assert response.status_code == code, response.text
    locations = [entry["loc"][-1] for entry in response.json()["detail"]]
    assert field in locations


def test_post_images_with_destination_outside_roots_names_destination(
    api_url: str, workspace: Path
) -> None:
    response = httpx.post(
        f"{api_url}/jobs/images",
        json={"sources": [str(workspace)], "destination": "/tmp/escape"},
    )

    assert response.status_code == 400
    assert response.json()["detail"][0]["loc"] == ["body", "destination"]


def test_post_with_oversized_body_is_refused_with_413(api_url: str) -> None:
    body = {"sources": ["x" * 4000] * 400, "destination": "y"}

    response = httpx.post(f"{api_url}/jobs/images", json=body)

    assert response.status_code == 413


def test_get_unknown_job_is_404_and_malformed_id_is_422(api_url: str) -> None:
    assert httpx.get(f"{api_url}/jobs/{'0' * 32}").status_code == 404
    assert httpx.get(f"{api_url}/jobs/not-an-id!").status_code == 422


def test_health_ready_and_metrics_answer(api_url: str) -> None:
    assert httpx.get(f"{api_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{api_url}/readyz").json() == {"status": "ready"}
    metrics = httpx.get(f"{api_url}/metrics")
    assert metrics.status_code == 200
    assert "batchgrid_jobs_submitted_total" in metrics.text


def test_queues_report_waiting_plus_in_flight_and_unknown_queue_is_404(
    api_url: str, cluster: Cluster
) -> None:
    names = [cluster.settings.images_queue, cluster.settings.tables_queue]

    listed = httpx.get(f"{api_url}/queues").json()
    one = httpx.get(f"{api_url}/queues/{names[0]}").json()
    unknown = httpx.get(f"{api_url}/queues/nope")

    assert [entry["queue"] for entry in listed] == names
    for entry in [*listed, one]:
        assert entry["backlog"] == entry["waiting"] + entry["in_flight"]
    assert unknown.status_code == 404 and names[0] in unknown.json()["detail"]


def test_api_with_token_refuses_requests_without_it_but_not_health(
    cluster: Cluster, workspace: Path
) -> None:
    settings = cluster.settings.model_copy(update={"api_token": "s3cret-token"})
    settings = type(settings).model_validate(
        {**cluster.settings.model_dump(), "api_token": "s3cret-token"}
    )
    csv = _csv(workspace / "a.csv", 100)
    body = {"csv": str(csv), "by": ["shop"], "values": ["amount"]}

    with ApiServer(settings) as url:
        anonymous = httpx.post(f"{url}/jobs/tables", json=body)
        wrong = httpx.post(
            f"{url}/jobs/tables", json=body, headers={"Authorization": "Bearer nope"}
        )
        right = httpx.post(
            f"{url}/jobs/tables",
            json=body,
            headers={"Authorization": "Bearer s3cret-token"},
        )
        health = httpx.get(f"{url}/healthz")
        metrics = httpx.get(f"{url}/metrics")
        spec = httpx.get(f"{url}/openapi.json")
        spec_with_token = httpx.get(
            f"{url}/openapi.json", headers={"Authorization": "Bearer s3cret-token"}
        )
        docs = httpx.get(f"{url}/docs")

    assert anonymous.status_code == wrong.status_code == metrics.status_code == 401
    assert spec.status_code == 401 and docs.status_code in (401, 404)
    assert right.status_code == 201
    assert health.status_code == 200
    assert spec_with_token.json()["info"]["title"] == "batchgrid"


def test_list_jobs_pages_newest_first(api_url: str, workspace: Path) -> None:
    csv = _csv(workspace / "l.csv", 10)
    body = {"csv": str(csv), "by": ["shop"], "values": ["amount"]}
    ids = [
        httpx.post(f"{api_url}/jobs/tables", json=body).json()["id"] for _ in range(3)
    ]

    page = httpx.get(f"{api_url}/jobs", params={"limit": 2}).json()

    assert [job["id"] for job in page["jobs"]] == ids[::-1][:2]


def test_committed_openapi_document_matches_the_api(cluster: Cluster) -> None:
    committed = json.loads((Path(__file__).parent.parent / "openapi.json").read_text())

    assert committed == create_api(cluster.settings).openapi(), (
        "openapi.json is stale: run `make openapi`"
    )


def test_cli_with_api_flag_submits_through_the_producer(
    api_url: str, workspace: Path
) -> None:
    csv = _csv(workspace / "c.csv", 300)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BATCHGRID_")}

    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "batchgrid",
            "table",
            str(csv),
            "--by",
            "shop",
            "--value",
            "amount",
            "--api",
            api_url,
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["job"]["options"]["origin"] == "api"
    assert_matches_reference(
        payload["result"], pandas_reference(csv, by=["shop"], values=["amount"])
    )


def test_api_client_result_when_the_job_is_unfinished_is_none_and_bad_input_raises(
    api_url: str, cluster: Cluster
) -> None:
    unfinished = cluster.store.create("tables", total=1, options={})
    client = ApiClient(api_url)

    pending = client.result(unfinished)
    cancelled = client.cancel(unfinished)

    assert pending is None
    assert cancelled.state == "cancelled"
    with pytest.raises(JobNotFoundError):
        client.result("0" * 32)
    with pytest.raises(InputError, match="outside") as refused:
        client.submit(TablesRequest(csv="/etc/passwd", by=["shop"], values=["amount"]))
    assert type(refused.value) is InputError  # a 400, not taken for a 409
    with pytest.raises(JobStateError, match="already cancelled"):
        client.cancel(unfinished)
