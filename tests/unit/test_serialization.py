"""Stored task fields into task results and back, without any server."""

import json
from datetime import UTC, datetime

import pytest
from django.tasks import TaskResult, TaskResultStatus
from django.tasks.base import TaskError

from tests import pool_tasks
from threadmill.backends.serialization import StoredTask, encode_payload, to_task_result
from threadmill.outcomes import succeeded
from threadmill.pool import held_outcomes

ERROR = {"exception_class_path": "builtins.ValueError", "traceback": "ValueError: no\n"}


@pytest.mark.parametrize("text", [str, str.encode], ids=["str", "bytes"])
@pytest.mark.parametrize("errors", ["[]", json.dumps([ERROR])], ids=["no errors", "an error"])
def test_a_stored_task_becomes_the_task_result_django_would_build(text, errors):
    payload = encode_payload(pool_tasks.add, [2, {"k": (1, 2)}], {"b": [3]})
    stored = StoredTask(
        id="t1",
        payload=payload,
        status="SUCCESSFUL",
        enqueued_at=text("1700000000.25"),
        started_at=text("1700000001.5"),
        last_attempted_at=text("1700000001.5"),
        finished_at=text("1700000002.75"),
        worker_ids=text('["host:1:fetcher"]'),
        errors=text(errors),
        return_value=text('{"sum": 5}'),
    )

    result = to_task_result(stored, "default")

    expected = TaskResult(
        task=pool_tasks.add,
        id="t1",
        status=TaskResultStatus.SUCCESSFUL,
        enqueued_at=datetime(2023, 11, 14, 22, 13, 20, 250000, tzinfo=UTC),
        started_at=datetime(2023, 11, 14, 22, 13, 21, 500000, tzinfo=UTC),
        finished_at=datetime(2023, 11, 14, 22, 13, 22, 750000, tzinfo=UTC),
        last_attempted_at=datetime(2023, 11, 14, 22, 13, 21, 500000, tzinfo=UTC),
        args=[2, {"k": [1, 2]}],
        kwargs={"b": [3]},
        backend="default",
        errors=[TaskError(**ERROR)] if errors != "[]" else [],
        worker_ids=["host:1:fetcher"],
    )
    object.__setattr__(expected, "_return_value", {"sum": 5})
    assert result == expected
    assert result.status is TaskResultStatus.SUCCESSFUL
    assert result.return_value == {"sum": 5}


def test_a_held_success_returning_none_decodes_as_such():
    stored = StoredTask(id="t1", payload=encode_payload(pool_tasks.add, [1, 2], {}),
                        status="RUNNING", worker_ids='["host:1:fetcher"]')  # fmt: skip
    leased = to_task_result(stored, "default")

    held = held_outcomes.encode(succeeded(leased, None), None, 0)
    finished, retry_in = held_outcomes.decode(leased, held)

    assert (finished.status, finished.return_value, retry_in) == ("SUCCESSFUL", None, None)
    assert held == held_outcomes.encode(succeeded(leased, 0), None, 0).replace(b"0}", b"null}")
