"""CLI pieces that need no server: the table printout, local worker logs, URLs."""

from pathlib import Path

import pytest

from batchgrid import local
from batchgrid.cli import _url_of, print_table
from batchgrid.settings import Settings


def test_print_table_when_a_value_column_holds_no_number_warns(
    capsys: pytest.CaptureFixture[str],
) -> None:
    stats = {"count": 0, "sum": 0.0, "mean": None, "min": None, "max": None}
    result = {
        "by": ["carrier"],
        "values": ["tailnum"],
        "groups": [
            {
                "key": ["AA"],
                "stats": {"tailnum": stats | {"missing": 0, "unparseable": 3}},
            }
        ],
    }

    print_table(result)

    assert (
        "no value of 'tailnum' is a number (3 unparseable)" in capsys.readouterr().err
    )


def test_local_worker_log_over_the_limit_is_moved_aside_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "WORKER_LOG_ROTATE_BYTES", 10)
    settings = Settings(
        _env_file=None, broker_url="redis://x", storage_roots=[str(tmp_path)]
    )
    workers = local.LocalWorkers(settings, count=2, log_dir=tmp_path)
    (tmp_path / "worker-0.log").write_text("x" * 11)
    (tmp_path / "worker-1.log").write_text("small")

    workers._rotate_log(0)
    workers._rotate_log(1)

    assert (tmp_path / "worker-0.log.1").read_text() == "x" * 11
    assert not (tmp_path / "worker-0.log").exists()
    assert (tmp_path / "worker-1.log").read_text() == "small"


@pytest.mark.parametrize(
    ("host", "port", "url"),
    [
        ("0.0.0.0", 8000, "http://127.0.0.1:8000"),
        ("::", 8001, "http://[::1]:8001"),
        ("::1", 8002, "http://[::1]:8002"),
        ("localhost", 8003, "http://localhost:8003"),
        ("127.0.0.1", 0, None),  # a random port: nothing to point at
    ],
)
def test_serve_url_when_noted_for_locked_out_commands_is_one_they_can_reach(
    host: str, port: int, url: str | None
) -> None:
    assert _url_of(host, port) == url
