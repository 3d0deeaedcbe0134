"""Run one leased task and describe how it ended: the only place where task code is called.

Knows no backend. It gets a leased (RUNNING) task result and returns a finished copy of it:
SUCCESSFUL with the return value, or FAILED with one more `TaskError`. Publishing that outcome
(acknowledge, retry) is the caller's job, so this module stays pure enough to test without I/O.
"""

import logging
from typing import Any

from django.db import close_old_connections
from django.dispatch import Signal
from django.tasks import TaskContext, TaskResult
from django.tasks.signals import task_finished, task_started

from threadmill.backends.serialization import encode_return_value, error_from_exception
from threadmill.outcomes import failed, succeeded

logger = logging.getLogger("threadmill.execution")


def execute(task_result: TaskResult, sender: type) -> TaskResult:
    """Run the task of a leased task result and return its finished copy.

    Every exception the task raises is its own failure, `SystemExit` and `KeyboardInterrupt`
    included: the worker that called it must live on. A return value that cannot be stored as
    JSON fails the task with `InvalidReturnValue`. `sender` is the backend class, as Django's
    `task_started` / `task_finished` signals expect.
    """
    _send(task_started, sender, task_result)
    try:
        value = _call(task_result)
        # Encode once here, so a value the backend could not store fails the task now, with a
        # clear error, instead of failing the acknowledgement later.
        encode_return_value(value)
    except BaseException as error:
        finished = failed(task_result, error_from_exception(error))
    else:
        finished = succeeded(task_result, value)
    finally:
        # Connections this task left broken or past CONN_MAX_AGE must not reach the next one.
        # (Those that age while a thread waits for work are its caller's to close.)
        close_old_connections()
    _send(task_finished, sender, finished)
    return finished


def _call(task_result: TaskResult) -> Any:
    task = task_result.task
    if task.takes_context:
        context = TaskContext(task_result=task_result)
        return task.call(context, *task_result.args, **task_result.kwargs)
    # Task.call runs an `async def` task to completion in its own event loop.
    return task.call(*task_result.args, **task_result.kwargs)


def _send(signal: Signal, sender: type, task_result: TaskResult) -> None:
    # A broken receiver is logged; it must neither fail the task nor kill the worker thread.
    for receiver, response in signal.send_robust(sender=sender, task_result=task_result):
        if isinstance(response, BaseException):
            logger.error(
                "Receiver %r of a task signal raised for task %s",
                receiver,
                task_result.id,
                exc_info=response,
            )
