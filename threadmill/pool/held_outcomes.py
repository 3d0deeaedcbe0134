"""Outcomes a worker process holds in its scoreboard before publishing them, and how the arbiter
publishes them when that process died first.

A worker that has more tasks waiting does not publish each outcome before running the next
task: it holds a few and publishes them in one round trip. Held only in the process, they
would die with it, and a crash of the next task would turn finished work into WorkerLost
failures. So each is first written, encoded here, into its task's scoreboard slot, which the
arbiter reads after reaping the process; the arbiter then publishes it as the worker would
have (acknowledge, or retry after the delay its policy chose).

The encoding is JSON: the status, the retry delay in seconds (null: none), and either the
return value or the task's new error.
"""

import json
from datetime import timedelta
from typing import Any

from django.tasks import TaskResult, TaskResultStatus
from django.tasks.base import TaskError
from django.utils import timezone

from threadmill.backends.base import AcknowledgeableTaskBackend
from threadmill.outcomes import failed, succeeded


def encode(finished: TaskResult, retry_in: timedelta | None) -> bytes:
    """Encode a finished task's outcome (its return value is already known to be JSON)."""
    held: dict[str, Any] = {
        "status": finished.status.value,
        "retry_in": None if retry_in is None else retry_in.total_seconds(),
    }
    if finished.status == TaskResultStatus.SUCCESSFUL:
        held["return_value"] = finished.return_value
    else:
        error = finished.errors[-1]
        held["error"] = [error.exception_class_path, error.traceback]
    return json.dumps(held, separators=(",", ":"), ensure_ascii=False).encode()


def publish(backend: AcknowledgeableTaskBackend, leased: TaskResult, held: bytes) -> str:
    """Publish a held outcome for the task `leased` (as stored, still RUNNING under the dead
    worker's lease); return what to log, as the worker would have."""
    outcome = json.loads(held)
    if outcome["status"] == TaskResultStatus.SUCCESSFUL.value:
        finished = succeeded(leased, outcome["return_value"])
    else:
        path, traceback = outcome["error"]
        finished = failed(leased, TaskError(exception_class_path=path, traceback=traceback))
    if outcome["retry_in"] is not None:
        retry_in = timedelta(seconds=outcome["retry_in"])
        backend.retry(finished, timezone.now() + retry_in)
        return f"FAILED, retry in {retry_in.total_seconds():g}s"
    backend.acknowledge(finished, by_holder=False)
    return finished.status.value
