"""The chord error callback fails a job only for a failure of its work."""

from collections.abc import Iterator

import pytest

from batchgrid import settings as settings_module
from batchgrid import tasks
from batchgrid.jobs import JobStore

pytestmark = pytest.mark.integration


@pytest.fixture
def store(broker_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[JobStore]:
    """The job store the task reads, on the test session's real Valkey."""
    monkeypatch.setenv("BATCHGRID_BROKER_URL", broker_url)
    monkeypatch.setenv("BATCHGRID_RESULT_BACKEND_URL", broker_url)
    settings_module.get_settings.cache_clear()
    tasks.job_store.cache_clear()
    yield tasks.job_store()
    tasks.job_store.cache_clear()
    settings_module.get_settings.cache_clear()


def _job(store: JobStore) -> str:
    job_id = store.create("tables", total=2, options={})
    store.record(job_id, {"0": {"rows": 1}})
    return job_id


def test_fail_job_when_a_task_failed_on_its_input_fails_the_job_with_the_reason(
    store: JobStore,
) -> None:
    job_id = _job(store)
    error = Exception("Dependency abc raised InputError('t.csv bytes 0-9: bad row')")

    tasks.fail_job.run(None, error, None, job_id)

    record = store.get(job_id)
    assert record.state == "failed" and record.error == "t.csv bytes 0-9: bad row"


def test_fail_job_of_an_expired_job_does_nothing(store: JobStore) -> None:
    tasks.fail_job.run(None, Exception("x"), None, "0" * 32)


@pytest.mark.parametrize("kind", ["images", "tables"])
@pytest.mark.parametrize(
    "raised", ["network:ConnectionError", "TimeLimitExceeded(5)"], ids=str
)
def test_fail_job_when_a_task_failed_on_an_outage_or_the_hard_limit_leaves_it_running(
    store: JobStore, kind: str, raised: str
) -> None:
    job_id = store.create(kind, total=2, options={})
    store.record(job_id, {"a": {"output": "a"}})
    error = Exception(f"Dependency t1 raised {raised}")

    tasks.fail_job.run(None, error, None, job_id)

    record = store.get(job_id)
    assert (record.state, record.done, record.failed) == ("running", 1, 0)


def test_fail_job_when_it_fails_the_job_observes_its_duration_once(
    store: JobStore,
) -> None:
    from prometheus_client import REGISTRY

    labels = {"kind": "tables", "state": "failed"}
    name = "batchgrid_job_duration_seconds_count"
    before = REGISTRY.get_sample_value(name, labels) or 0.0
    job_id = _job(store)
    error = Exception("Dependency abc raised InputError('t.csv bytes 0-9: bad row')")

    tasks.fail_job.run(None, error, None, job_id)
    tasks.fail_job.run(None, error, None, job_id)  # a second error callback

    assert REGISTRY.get_sample_value(name, labels) == before + 1
