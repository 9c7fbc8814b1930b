"""The Celery configuration batchgrid's reliability rests on, and that it holds."""

import ssl
import time
from pathlib import Path

import pytest

from batchgrid.celery_app import create_app
from batchgrid.settings import Settings
from tests.conftest import Cluster


def _conf(**overrides: object) -> dict[str, object]:
    values: dict[str, object] = {"broker_url": "redis://127.0.0.1:6379/0", **overrides}
    settings = Settings(_env_file=None, **values)  # type: ignore[arg-type]
    return dict(create_app(settings).conf)


def test_celery_config_is_json_only_with_late_acks_and_one_task_per_process() -> None:
    conf = _conf()

    assert conf["task_serializer"] == conf["result_serializer"] == "json"
    assert conf["accept_content"] == conf["result_accept_content"] == ["json"]
    assert conf["task_acks_late"] is True
    assert conf["task_reject_on_worker_lost"] is True
    assert conf["worker_prefetch_multiplier"] == 1


def test_celery_config_when_the_redis_url_is_tls_checks_certificates() -> None:
    settings = Settings(_env_file=None, broker_url="rediss://u:p@redis.test:6380/2")
    app = create_app(settings)

    backend = app.backend  # Celery refuses a rediss:// URL with no certificate rule
    with app.connection_for_write() as connection:
        broker_ssl = connection.ssl

    assert backend.connparams["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert isinstance(broker_ssl, dict)
    assert broker_ssl["ssl_cert_reqs"] == ssl.CERT_REQUIRED


def test_celery_config_when_the_tls_url_chooses_its_rule_keeps_it() -> None:
    settings = Settings(
        _env_file=None, broker_url="rediss://u:p@redis.test:6380/2?ssl_cert_reqs=none"
    )

    conf = dict(create_app(settings).conf)

    assert not conf["broker_use_ssl"] and not conf["redis_backend_use_ssl"]


def test_celery_config_visibility_timeout_outlasts_the_hard_limit_on_both_sides() -> (
    None
):
    conf = _conf(
        hard_time_limit_s=900, soft_time_limit_s=800, visibility_timeout_s=1200
    )

    broker = conf["broker_transport_options"]
    backend = conf["result_backend_transport_options"]
    assert isinstance(broker, dict) and isinstance(backend, dict)
    assert broker["visibility_timeout"] == backend["visibility_timeout"] == 1200
    assert conf["task_time_limit"] == 900 and conf["task_soft_time_limit"] == 800


def test_celery_config_results_expire() -> None:
    conf = _conf(result_expires_s=7200)

    assert conf["result_expires"] == 7200


@pytest.mark.integration
def test_worker_refuses_a_pickle_message_and_runs_nothing(
    cluster: Cluster, workspace: Path
) -> None:
    app = create_app(cluster.settings)
    logs = [cluster.workers.log_path(i) for i in range(cluster.workers.count)]
    offsets = {log: len(log.read_text()) for log in logs}

    # A task an attacker could send: pickle would run code on deserialization.
    result = app.send_task(
        "batchgrid.jobs.fail",
        args=(None, None, None, "no-such-job"),
        queue=cluster.settings.tables_queue,
        serializer="pickle",
    )
    deadline = time.monotonic() + 30
    refused = ""
    while "untrusted content of type pickle" not in refused:
        assert time.monotonic() < deadline, "no worker refused the pickle message"
        refused = "".join(log.read_text()[offsets[log] :] for log in logs)
        time.sleep(0.1)

    assert result.state == "PENDING"  # never ran, so no result was stored
