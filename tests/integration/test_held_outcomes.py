"""The arbiter publishes what a dead worker process held unpublished, as the worker would have."""

from datetime import timedelta

import pytest
from django.tasks import TaskResultStatus

from tests import tasks
from threadmill.backends.serialization import error_from_exception
from threadmill.outcomes import failed, succeeded
from threadmill.pool import held_outcomes

WORKER = "testhost:1:fetcher"


def publish_held(backend, task_id, held):
    finished, retry_in = held_outcomes.decode(backend.get_result(task_id), held)
    return held_outcomes.publish(backend, finished, retry_in)


def test_a_held_success_is_published_with_its_return_value(backend):
    enqueued = tasks.add.enqueue(2, 3)
    leased = backend.acquire(timeout=1, worker_id=WORKER)
    held = held_outcomes.encode(succeeded(leased, {"sum": 5, "text": "é"}), None, 0)

    assert publish_held(backend, enqueued.id, held) == "SUCCESSFUL"

    stored = backend.get_result(enqueued.id)
    assert stored.status == TaskResultStatus.SUCCESSFUL
    assert stored.return_value == {"sum": 5, "text": "é"}
    assert stored.worker_ids == [WORKER]


def test_a_held_failure_is_published_with_every_error_of_the_attempt(backend):
    enqueued = tasks.fail.enqueue()
    leased = backend.acquire(timeout=1, worker_id=WORKER)
    outcome = failed(leased, error_from_exception(ValueError("it broke")))
    # Its retry policy raised too: that error is recorded after the task's own.
    outcome.errors.append(error_from_exception(RuntimeError("the policy broke")))
    held = held_outcomes.encode(outcome, None, len(leased.errors))

    assert publish_held(backend, enqueued.id, held) == "FAILED"

    stored = backend.get_result(enqueued.id)
    assert stored.status == TaskResultStatus.FAILED
    assert [e.exception_class for e in stored.errors] == [ValueError, RuntimeError]
    assert "it broke" in stored.errors[0].traceback


def test_a_held_failure_its_policy_retries_is_queued_again_after_its_delay(backend):
    enqueued = tasks.fail.enqueue()
    leased = backend.acquire(timeout=1, worker_id=WORKER)
    outcome = failed(leased, error_from_exception(ValueError("first")))
    held = held_outcomes.encode(outcome, timedelta(seconds=60), 0)

    assert publish_held(backend, enqueued.id, held) == "FAILED, retry in 60s"

    stored = backend.get_result(enqueued.id)
    assert stored.status == TaskResultStatus.READY
    assert "first" in stored.errors[-1].traceback
    assert backend.acquire_many(count=1, timeout=0.2, worker_id=WORKER) == []  # not due yet


def test_a_held_outcome_is_refused_once_the_lease_has_ended(backend):
    enqueued = tasks.add.enqueue(1, 1)
    leased = backend.acquire(timeout=1, worker_id=WORKER)
    held = held_outcomes.encode(succeeded(leased, 2), None, 0)
    stale = backend.get_result(enqueued.id)
    assert backend.acknowledge(succeeded(leased, 3))  # the holder itself got there first

    finished, retry_in = held_outcomes.decode(stale, held)
    assert held_outcomes.publish(backend, finished, retry_in) is None
    assert backend.get_result(enqueued.id).return_value == 3


def test_bytes_that_are_no_held_outcome_are_refused_with_value_error(backend):
    tasks.add.enqueue(1, 1)
    leased = backend.acquire(timeout=1, worker_id=WORKER)
    for garbage in (b"\xff", b"{}", b'{"status":"FAILED","retry_in":null,"errors":[]}'):
        with pytest.raises(ValueError, match="not a held outcome"):
            held_outcomes.decode(leased, garbage)
