"""The ``batchgrid`` command as a user runs it: embedded Valkey, local workers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import assert_matches_reference, pandas_reference

pytestmark = pytest.mark.integration


def run_cli(
    tmp_path: Path, *args: str, timeout_s: float = 180
) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("BATCHGRID_")
    }
    env |= {
        "BATCHGRID_DATA_DIR": str(tmp_path / "state"),
        "BATCHGRID_STORAGE_ROOTS": str(tmp_path),
        "BATCHGRID_CONCURRENCY": "2",
        "COLUMNS": "200",
    }
    return subprocess.run(
        [sys.executable, "-m", "batchgrid", *args],
        cwd=tmp_path,
        env=env,
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
