"""The job store against a real Valkey: every write idempotent, states final."""

from collections.abc import Iterator

import pytest

from batchgrid.errors import JobNotFoundError
from batchgrid.jobs import JobStore

pytestmark = pytest.mark.integration


@pytest.fixture
def store(broker_url: str) -> Iterator[JobStore]:
    job_store = JobStore(broker_url, ttl_s=600)
    yield job_store
    job_store.close()


def test_record_when_an_item_is_recorded_twice_counts_it_once(store: JobStore) -> None:
    job_id = store.create("images", total=2, options={})

    store.record(job_id, {"a.jpg": {"output": "a.jpg"}})
    store.record(job_id, {"a.jpg": {"output": "a.jpg"}})
    record = store.get(job_id)

    assert (record.done, record.failed, record.state) == (1, 0, "running")


def test_record_when_a_retry_succeeds_clears_the_failure(store: JobStore) -> None:
    job_id = store.create("images", total=1, options={})

    store.record(job_id, {"a.jpg": {"error": "unreadable", "message": "x"}})
    store.record(job_id, {"a.jpg": {"output": "a.jpg"}})

    assert store.get(job_id).failed == 0


def test_finish_when_called_twice_keeps_the_first_state_and_result(
    store: JobStore,
) -> None:
    job_id = store.create("tables", total=1, options={})

    first = store.finish(job_id, "succeeded", result={"groups": [1]})
    second = store.finish(job_id, "failed", result={"groups": [2]}, error="late")

    assert (first, second) == (True, False)
    assert store.get(job_id).state == "succeeded"
    assert store.get(job_id).error is None
    assert store.result(job_id) == {"groups": [1]}


def test_cancel_then_a_late_callback_cannot_mark_it_succeeded(store: JobStore) -> None:
    job_id = store.create("tables", total=3, options={})

    assert store.cancel(job_id)
    assert not store.finish(job_id, "succeeded", result={"groups": []})
    assert store.get(job_id).state == "cancelled"
    assert store.result(job_id) is None


def test_record_for_an_expired_job_does_not_recreate_its_record(
    store: JobStore,
) -> None:
    store.record("0" * 32, {"x": {"output": "x"}})

    with pytest.raises(JobNotFoundError, match="expired"):
        store.get("0" * 32)


def test_count_attempt_counts_redeliveries_of_one_try_not_retries(
    store: JobStore,
) -> None:
    job_id = store.create("tables", total=1, options={})

    counts = [store.count_attempt(job_id, "t1", retries) for retries in (0, 0, 1)]

    assert counts == [1, 2, 1]


def test_claim_succeeds_once_per_token(store: JobStore) -> None:
    assert store.claim("scheduled:abc")
    assert not store.claim("scheduled:abc")
