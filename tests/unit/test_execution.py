"""Running one leased task into a finished task result, without any backend or server."""

import pytest
from django.tasks import TaskResult, TaskResultStatus
from django.tasks.signals import task_finished, task_started
from django.utils import timezone

from tests import pool_tasks
from threadmill.execution import execute


class Sender:
    """Stands for the backend class that signals are sent from."""


def leased(task, *args, **kwargs) -> TaskResult:
    now = timezone.now()
    return TaskResult(
        task=task,
        id="task-1",
        status=TaskResultStatus.RUNNING,
        enqueued_at=now,
        started_at=now,
        finished_at=None,
        last_attempted_at=now,
        args=list(args),
        kwargs=kwargs,
        backend="default",
        errors=[],
        worker_ids=["host:1:fetcher"],
    )


def test_a_sync_task_succeeds_with_its_return_value():
    result = execute(leased(pool_tasks.add, 2, 3), Sender)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 5
    assert result.finished_at is not None


def test_an_async_task_is_run_to_completion():
    assert execute(leased(pool_tasks.async_add, 2, 3), Sender).return_value == 5


def test_a_task_that_takes_context_gets_its_attempt():
    result = execute(leased(pool_tasks.whoami), Sender)
    assert result.return_value["attempt"] == 1


@pytest.mark.parametrize(
    ("task", "error_path"),
    [
        (pool_tasks.raise_system_exit, "builtins.SystemExit"),
        (pool_tasks.raise_keyboard_interrupt, "builtins.KeyboardInterrupt"),
        (pool_tasks.return_not_json, "threadmill.exceptions.InvalidReturnValue"),
    ],
)
def test_a_base_exception_or_a_non_json_value_fails_the_task_without_escaping(task, error_path):
    result = execute(leased(task), Sender)
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[-1].exception_class_path == error_path
    assert result.errors[-1].traceback.startswith("Traceback")


def test_a_non_json_return_value_is_named_in_the_error():
    result = execute(leased(pool_tasks.return_not_json), Sender)
    assert "not JSON serializable" in result.errors[-1].traceback


def test_the_leased_task_result_is_left_unchanged():
    original = leased(pool_tasks.raise_system_exit)
    execute(original, Sender)
    assert original.status == TaskResultStatus.RUNNING
    assert original.errors == []


def test_started_and_finished_signals_are_sent_and_a_broken_receiver_is_only_logged(caplog):
    seen = []

    def record(sender, task_result, **kwargs):
        seen.append((sender, task_result.status))

    def broken(sender, task_result, **kwargs):
        raise RuntimeError("a broken receiver")

    task_started.connect(record)
    task_finished.connect(record)
    task_started.connect(broken)
    try:
        result = execute(leased(pool_tasks.add, 1, 1), Sender)
    finally:
        task_started.disconnect(record)
        task_finished.disconnect(record)
        task_started.disconnect(broken)
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert seen == [(Sender, TaskResultStatus.RUNNING), (Sender, TaskResultStatus.SUCCESSFUL)]
    assert "a broken receiver" in caplog.text
