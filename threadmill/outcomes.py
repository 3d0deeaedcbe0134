"""Copies of a task result that finished now: succeeded with a value, or failed with an error."""

from typing import Any

from django.tasks import TaskResult, TaskResultStatus
from django.tasks.base import TaskError
from django.utils import timezone
from django.utils.json import normalize_json


def succeeded(task_result: TaskResult, value: Any) -> TaskResult:
    """Return a copy of a task result that finished now, returning `value`."""
    finished = _clone(task_result)
    object.__setattr__(finished, "status", TaskResultStatus.SUCCESSFUL)
    object.__setattr__(finished, "finished_at", timezone.now())
    object.__setattr__(finished, "_return_value", normalize_json(value))
    return finished


def failed(task_result: TaskResult, error: TaskError) -> TaskResult:
    """Return a copy of a task result that failed now with `error`."""
    finished = _clone(task_result)
    object.__setattr__(finished, "status", TaskResultStatus.FAILED)
    object.__setattr__(finished, "finished_at", timezone.now())
    object.__setattr__(finished, "errors", [*task_result.errors, error])
    return finished


def _clone(task_result: TaskResult) -> TaskResult:
    # TaskResult is a frozen, slotted dataclass; copy.copy() would trip over the frozen setattr.
    clone = object.__new__(TaskResult)
    for name in TaskResult.__slots__:
        object.__setattr__(clone, name, getattr(task_result, name))
    object.__setattr__(clone, "errors", list(task_result.errors))
    object.__setattr__(clone, "worker_ids", list(task_result.worker_ids))
    return clone
