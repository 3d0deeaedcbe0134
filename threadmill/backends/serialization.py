"""The one place where a task result becomes stored bytes, and stored bytes a task result.

A stored task is its *payload* (the task's dotted path, options, args and kwargs: JSON written
once at enqueue and never rewritten) plus a few mutable fields (status, times, worker ids,
errors, return value). Backends move these fields around as opaque bytes; only this module
encodes or decodes them, so a payload comes back exactly as it went in.
"""

import json
import secrets
import traceback
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from django.tasks import Task, TaskResult, TaskResultStatus
from django.tasks.base import TaskError
from django.utils.json import normalize_json
from django.utils.module_loading import import_string

from threadmill.exceptions import InvalidReturnValue, InvalidTaskPath


def normalized_arguments(args: Any, kwargs: Any) -> tuple[list, dict]:
    """Arguments as Django's TaskResult holds them (`normalize_json`): normalized once, for
    both the payload and the enqueued result."""
    return normalize_json(args), normalize_json(kwargs)


def encode_payload(task: Task, args: list, kwargs: dict) -> bytes:
    """Encode what is needed to run `task` later: its path, its options and its arguments
    (`normalized_arguments`)."""
    return _dumps(
        {
            "task": task.module_path,
            "priority": task.priority,
            "queue_name": task.queue_name,
            "run_after": task.run_after.timestamp() if task.run_after else None,
            "backend": task.backend,
            "takes_context": task.takes_context,
            "args": args,
            "kwargs": kwargs,
        }
    )


def encode_return_value(value: Any) -> bytes:
    """Encode a task's return value, or raise InvalidReturnValue naming why it cannot be."""
    if value is None:  # most tasks return nothing
        return b"null"
    try:
        return _dumps(normalize_json(value))
    except (TypeError, ValueError) as error:
        raise InvalidReturnValue(
            f"The task returned a value that is not JSON serializable: {error}"
        ) from error


def encode_errors(errors: list[TaskError]) -> bytes:
    if not errors:
        return b"[]"
    return _dumps(
        [{"exception_class_path": e.exception_class_path, "traceback": e.traceback} for e in errors]
    )


def encode_worker_ids(worker_ids: list[str]) -> bytes:
    return _dumps(worker_ids)


def error_from_exception(error: BaseException) -> TaskError:
    """Describe an exception as Django's TaskError: its class path and its formatted traceback."""
    cls = type(error)
    return TaskError(
        exception_class_path=f"{cls.__module__}.{cls.__qualname__}",
        traceback="".join(traceback.format_exception(error)),
    )


def synthetic_error(cls: type[BaseException], message: str) -> TaskError:
    """Describe an error that was not raised in the task (a lost worker, an expired lease)."""
    return TaskError(
        exception_class_path=f"{cls.__module__}.{cls.__qualname__}",
        traceback=f"{cls.__module__}.{cls.__qualname__}: {message}\n",
    )


@lru_cache(maxsize=1024)
def load_task(path: str) -> Task:
    """Import the task at `path`; refuse anything that is not a `django.tasks.Task` instance."""
    try:
        candidate = import_string(path)
    except ImportError as error:
        raise InvalidTaskPath(f"Cannot import task {path!r}: {error}") from error
    if not isinstance(candidate, Task):
        raise InvalidTaskPath(
            f"{path!r} is a {type(candidate).__name__}, not a django.tasks.Task; refused."
        )
    return candidate


@lru_cache(maxsize=4096)
def _task_with_options(
    path: str, priority: int, queue_name: str, run_after: float | None, backend: str
) -> Task:
    task = load_task(path)
    changes: dict[str, Any] = {}
    if task.priority != priority:
        changes["priority"] = priority
    if task.queue_name != queue_name:
        changes["queue_name"] = queue_name
    if task.backend != backend:
        changes["backend"] = backend
    if run_after is not None:
        changes["run_after"] = _datetime(run_after)
    return replace(task, **changes) if changes else task


@dataclass(frozen=True, slots=True)
class StoredTask:
    """The fields of one task as a backend stores them (times are seconds since the epoch)."""

    id: str
    payload: bytes
    status: str
    enqueued_at: float | None = None
    started_at: float | None = None
    last_attempted_at: float | None = None
    finished_at: float | None = None
    worker_ids: bytes | None = None
    errors: bytes | None = None
    return_value: bytes | None = None


def decode_payload(payload: bytes) -> dict[str, Any]:
    return json.loads(payload)


def to_task_result(stored: StoredTask, alias: str) -> TaskResult:
    """Build the TaskResult a stored task stands for (raises InvalidTaskPath for a bad path)."""
    data = decode_payload(stored.payload)
    task = _task_with_options(
        data["task"], data["priority"], data["queue_name"], data["run_after"], data["backend"]
    )
    errors = stored.errors
    worker_ids = stored.worker_ids
    status = _STATUSES.get(stored.status) or TaskResultStatus(stored.status)
    return_value = None
    if stored.return_value is not None and status == TaskResultStatus.SUCCESSFUL:
        return_value = json.loads(stored.return_value)
    # Not TaskResult(...): its __post_init__ normalizes args and kwargs again, and what JSON
    # decoding gives back is normal already. On a worker's hot path that is a tenth of a lease.
    return _task_result(
        task=task,
        id=stored.id,
        status=status,
        enqueued_at=_datetime(stored.enqueued_at),
        started_at=_datetime(stored.started_at),
        last_attempted_at=_datetime(stored.last_attempted_at),
        finished_at=_datetime(stored.finished_at),
        args=data["args"],
        kwargs=data["kwargs"],
        backend=alias,
        errors=[TaskError(**e) for e in json.loads(errors)] if errors not in _NO_ERRORS else [],
        worker_ids=json.loads(worker_ids) if worker_ids else [],
        _return_value=return_value,
    )


_STATUSES = {status.value: status for status in TaskResultStatus}
_NO_ERRORS = (None, "", b"", "[]", b"[]")
_FIELDS = {
    "task", "id", "status", "enqueued_at", "started_at", "finished_at", "last_attempted_at",
    "args", "kwargs", "backend", "errors", "worker_ids", "_return_value",
}  # fmt: skip

# The fields `to_task_result` fills are exactly TaskResult's slots: else, another Django, build
# it the documented way.
_SLOTS_KNOWN = set(getattr(TaskResult, "__slots__", ())) == _FIELDS


def _task_result(**fields: Any) -> TaskResult:
    """A TaskResult of these fields (all of _FIELDS), without its __post_init__: for args and
    kwargs that are JSON-normal already."""
    if not _SLOTS_KNOWN:
        return_value = fields.pop("_return_value")
        result = TaskResult(**fields)
        object.__setattr__(result, "_return_value", return_value)
        return result
    result = object.__new__(TaskResult)
    for name, value in fields.items():
        object.__setattr__(result, name, value)
    return result


def new_task_id() -> str:
    """A fresh task id: 128 random bits, ~50x cheaper than Django's get_random_string(32)."""
    return secrets.token_hex(16)


def enqueued_result(
    task: Task,
    task_id: str,
    enqueued_at: datetime | float | str,
    args: list,
    kwargs: dict,
    alias: str,
) -> TaskResult:
    """The READY TaskResult of a task just enqueued, its arguments `normalized_arguments`
    (no need to decode what we just encoded, nor to normalize them twice)."""
    return _task_result(
        task=task,
        id=task_id,
        status=TaskResultStatus.READY,
        enqueued_at=(enqueued_at if isinstance(enqueued_at, datetime) else _datetime(enqueued_at)),
        started_at=None,
        last_attempted_at=None,
        finished_at=None,
        args=args,
        kwargs=kwargs,
        backend=alias,
        errors=[],
        worker_ids=[],
        _return_value=None,
    )


def _datetime(timestamp: float | bytes | str | None) -> datetime | None:
    if timestamp is None or timestamp == b"" or timestamp == "":
        return None
    return datetime.fromtimestamp(float(timestamp), UTC)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
