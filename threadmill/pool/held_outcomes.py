"""Outcomes a worker process holds in its scoreboard before publishing them, and how the arbiter
publishes them when that process died first.

A worker that has more tasks waiting does not publish each outcome before running the next
task: it holds a few and publishes them in one round trip. Held only in the process, they
would die with it, and a crash of the next task would turn finished work into WorkerLost
failures. So each is first written, encoded here, into its task's scoreboard slot, which the
arbiter reads after reaping the process; the arbiter then publishes it as the worker would
have (acknowledge, or retry after the delay its policy chose).

The encoding is JSON: the status, the retry delay in seconds (null: none), and either the
return value or the errors this attempt added (the task's own, and its retry policy's if that
raised).
"""

import json
from datetime import timedelta
from typing import Any

from django.tasks import TaskResult, TaskResultStatus
from django.tasks.base import TaskError
from django.utils import timezone

from threadmill.backends.base import AcknowledgeableTaskBackend
from threadmill.outcomes import failed, succeeded


def encode(finished: TaskResult, retry_in: timedelta | None, known_errors: int) -> bytes:
    """Encode a finished task's outcome (its return value is already known to be JSON);
    `known_errors`: how many errors the task had when it was leased."""
    successful = finished.status == TaskResultStatus.SUCCESSFUL
    if successful and retry_in is None and finished.return_value is None:  # most tasks
        return _RETURNED_NONE
    held: dict[str, Any] = {
        "status": finished.status.value,
        "retry_in": None if retry_in is None else retry_in.total_seconds(),
    }
    if successful:
        held["return_value"] = finished.return_value
    else:
        held["errors"] = [
            [e.exception_class_path, e.traceback] for e in finished.errors[known_errors:]
        ]
    return json.dumps(held, separators=(",", ":"), ensure_ascii=False).encode()


_RETURNED_NONE = b'{"status":"SUCCESSFUL","retry_in":null,"return_value":null}'


def decode(leased: TaskResult, held: bytes) -> tuple[TaskResult, timedelta | None]:
    """The finished copy of `leased` (the task as stored, still RUNNING under the dead worker's
    lease) that a held outcome describes, and its retry delay; ValueError if `held` is not one."""
    try:
        outcome = json.loads(held)
        if outcome["status"] == TaskResultStatus.SUCCESSFUL.value:
            finished = succeeded(leased, outcome["return_value"])
        else:
            errors = [TaskError(exception_class_path=p, traceback=t) for p, t in outcome["errors"]]
            finished = failed(leased, errors[0])
            finished.errors.extend(errors[1:])
        retry_in = outcome["retry_in"]
        return finished, None if retry_in is None else timedelta(seconds=retry_in)
    except (KeyError, IndexError, TypeError, ValueError) as error:
        raise ValueError(f"not a held outcome: {error!r}") from error


def publish(
    backend: AcknowledgeableTaskBackend, finished: TaskResult, retry_in: timedelta | None
) -> str | None:
    """Publish a decoded held outcome as its worker would have; return what to log, or None
    when the backend refused it (the lease had ended meanwhile)."""
    if retry_in is not None:
        if not backend.retry(finished, timezone.now() + retry_in):
            return None
        return f"FAILED, retry in {retry_in.total_seconds():g}s"
    if not backend.acknowledge(finished, by_holder=False):
        return None
    return finished.status.value
