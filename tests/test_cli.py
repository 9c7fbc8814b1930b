"""The ``batchgrid`` command as a user runs it: embedded Valkey, local workers."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis
from PIL import Image

from batchgrid.backlog import queue_keys
from batchgrid.local import WORKER_START_TIMEOUT_S, EmbeddedValkey
from tests.conftest import assert_matches_reference, pandas_reference
from tests.corpus import write_slow_pngs
from tests.faultkit import children, free_port

pytestmark = pytest.mark.integration


def cli_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a user with no broker configured, working in tmp_path."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("BATCHGRID_")
    }
    return env | {
        "BATCHGRID_DATA_DIR": str(tmp_path / "state"),
        "BATCHGRID_STORAGE_ROOTS": str(tmp_path),
        "BATCHGRID_CONCURRENCY": "2",
        "COLUMNS": "200",
    }


def run_cli(
    tmp_path: Path,
    *args: str,
    timeout_s: float = 180,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchgrid", *args],
        cwd=tmp_path,
        env=cli_env(tmp_path) | (extra_env or {}),
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def test_table_command_without_broker_runs_embedded_and_prints_json(
    tmp_path: Path,
) -> None:
    csv = tmp_path / "sales.csv"
    rows = [f"{'ab'[i % 2]},{i * 1.25:.2f}" for i in range(500)]
    csv.write_text("shop , amount\n" + "\n".join(rows) + "\n")

    done = run_cli(
        tmp_path,
        "table",
        "sales.csv",
        "--by",
        "shop",
        "--value",
        "amount",
        "--chunk-bytes",
        "512",
        "--json",
    )

    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["job"]["state"] == "succeeded"
    assert payload["job"]["progress"]["total"] > 1
    assert_matches_reference(
        payload["result"], pandas_reference(csv, by=["shop"], values=["amount"])
    )


def test_status_command_after_the_job_reads_it_back_from_the_append_only_file(
    tmp_path: Path,
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    Image.new("RGB", (30, 20), "teal").save(src / "ok.png")
    (src / "bad.jpg").write_text("not a photo")

    done = run_cli(tmp_path, "images", "in", "out", "--json")
    job_id = json.loads(done.stdout)["job"]["id"]
    status = run_cli(tmp_path, "status", job_id, "--json")

    assert done.returncode == 3, done.stderr
    items = json.loads(done.stdout)["items"]
    assert items["bad.jpg"]["error"] == "unidentified"
    assert "bad.jpg" in items["bad.jpg"]["message"]
    assert (tmp_path / "out" / "ok.png").exists()
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["progress"] == {"done": 2, "failed": 1, "total": 2}


def test_table_command_when_file_is_missing_exits_2_with_one_line(
    tmp_path: Path,
) -> None:
    done = run_cli(tmp_path, "table", "nope.csv", "--by", "a", "--value", "b")

    assert done.returncode == 2
    assert "nope.csv: no such file" in done.stderr
    assert "Traceback" not in done.stderr


def test_worker_command_without_broker_url_explains_what_to_set(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "worker")

    assert done.returncode == 2
    assert "BATCHGRID_BROKER_URL" in done.stderr


@pytest.mark.parametrize(
    ("variable", "value", "said"),
    [
        ("BATCHGRID_SCHEDULE", "[", "BATCHGRID_SCHEDULE is not valid JSON"),
        ("BATCHGRID_MAX_RETRIES", "lots", "BATCHGRID_MAX_RETRIES: Input should be"),
        (
            "BATCHGRID_SCHEDULE",
            '[{"name": "x", "kind": "tables", "every_s": 5}]',
            "BATCHGRID_SCHEDULE[0].params: Field required",
        ),
    ],
)
def test_any_command_when_a_setting_is_malformed_names_its_variable(
    tmp_path: Path, variable: str, value: str, said: str
) -> None:
    done = run_cli(tmp_path, "status", "0" * 32, extra_env={variable: value})

    assert done.returncode == 2
    assert said in done.stderr
    assert "Traceback" not in done.stderr


def test_table_command_when_given_a_folder_says_it_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()

    done = run_cli(tmp_path, "table", "data", "--by", "a", "--value", "b")

    assert done.returncode == 2
    assert "data: is a folder" in done.stderr


def test_status_command_when_api_url_has_no_scheme_says_so(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "status", "0" * 32, "--api", "localhost:8000")

    assert done.returncode == 2
    assert "e.g. http://localhost:8000" in done.stderr


def _alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (zombies count as ended)."""
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _kill_groups(pids: set[int]) -> None:
    """After a failure: nothing a test started may outlive it. Each worker leads
    a session of its own, its pool processes in its group."""
    for pid in _alive(pids):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _start(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    """The command in a process group of its own, as a terminal starts it."""
    return subprocess.Popen(
        [sys.executable, "-m", "batchgrid", *args],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _wait_ready(serve: subprocess.Popen[str], port: int) -> None:
    deadline = time.monotonic() + WORKER_START_TIMEOUT_S + 60
    while True:
        assert serve.poll() is None, serve.communicate()[0]
        assert time.monotonic() < deadline, "serve never became ready"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)


def test_serve_when_terminated_stops_the_server_and_workers_it_started(
    tmp_path: Path,
) -> None:
    port = free_port()
    serve = _start(tmp_path, "serve", "--port", str(port))
    started: set[int] = set()
    try:
        _wait_ready(serve, port)
        started = set(children(serve.pid))

        serve.send_signal(signal.SIGTERM)  # to serve alone, as `kill` does
        output, _ = serve.communicate(timeout=120)
        left = _alive(started)  # read before the clean-up below
    finally:
        started |= set(children(serve.pid))  # also when it never became ready
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGKILL)
        _kill_groups(started)

    assert len(started) >= 2, started  # Valkey and a worker
    assert left == set(), output
    assert serve.returncode == 0, output
    assert "Traceback" not in output


def test_commands_while_serve_holds_the_server_use_its_url_and_token_from_dotenv(
    tmp_path: Path,
) -> None:
    port = free_port()
    (tmp_path / ".env").write_text(
        f"BATCHGRID_API_TOKEN=s3cret\nBATCHGRID_API_URL=http://127.0.0.1:{port}\n"
    )
    serve = _start(tmp_path, "serve", "--port", str(port))
    try:
        _wait_ready(serve, port)

        through_api = run_cli(tmp_path, "status", "0" * 32)
        # An empty variable outranks .env: this command tries the embedded server.
        locked_out = run_cli(
            tmp_path, "status", "0" * 32, extra_env={"BATCHGRID_API_URL": ""}
        )
    finally:
        started = set(children(serve.pid))
        os.killpg(serve.pid, signal.SIGKILL)
        _kill_groups(started)

    assert through_api.returncode == 2, through_api.stderr
    assert "no job" in through_api.stderr, through_api.stderr
    assert "refused" not in through_api.stderr
    assert locked_out.returncode == 2
    assert f"--api http://127.0.0.1:{port}" in locked_out.stderr, locked_out.stderr


@pytest.mark.parametrize(
    "stop",
    [
        pytest.param(lambda pid: os.killpg(pid, signal.SIGINT), id="ctrl-c"),
        pytest.param(lambda pid: os.kill(pid, signal.SIGTERM), id="sigterm"),
    ],
)
def test_images_when_interrupted_cancel_the_job_and_empty_the_queue(
    tmp_path: Path, stop: Callable[[int], None]
) -> None:
    write_slow_pngs(tmp_path / "in", 30)
    log = tmp_path / "state" / "logs" / "worker-0.log"
    images = _start(tmp_path, "images", "in", "out")
    started: set[int] = set()
    try:
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S + 60
        while not (
            log.exists() and "converted 1/1" in log.read_text("utf-8", "replace")
        ):
            assert images.poll() is None, images.communicate()[0]
            assert time.monotonic() < deadline, "no image was converted"
            time.sleep(0.1)
        started = set(children(images.pid))

        stop(images.pid)  # Ctrl-C reaches the whole group; `kill` the command alone
        output, _ = images.communicate(timeout=120)
        left = _alive(started)  # read before the clean-up below
    finally:
        started |= set(children(images.pid))
        if images.poll() is None:
            os.killpg(images.pid, signal.SIGKILL)
        _kill_groups(started)

    assert images.returncode == 130, output
    assert "cancelled job" in output
    for noise_line in ("Traceback", "Exception ignored", "unreachable", "still queued"):
        assert noise_line not in output, output
    assert left == set()
    with EmbeddedValkey(tmp_path / "state") as server:
        client = redis.Redis.from_url(server.url)
        waiting = sum(client.llen(key) for key in queue_keys("images"))
        held = client.hlen("unacked")
        client.close()
    assert (waiting, held) == (0, 0)
