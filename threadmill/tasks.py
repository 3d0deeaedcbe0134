"""The task class of threadmill backends: Django's `Task` plus a retry policy and a timeout."""

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from django.tasks import Task as DjangoTask
from django.tasks import TaskContext
from django.tasks.exceptions import InvalidTask

RetryPolicy = Callable[[TaskContext], timedelta | None]


@dataclass(frozen=True, slots=True, kw_only=True)
class Task(DjangoTask):
    """A task that may say how to retry it and how long it may run.

    `retry` gets the context of the attempt that just failed (`context.task_result.errors[-1]`
    is its error) and returns the delay before the next attempt, or None to fail for good.
    `timeout` bounds one attempt; the pool stops the task when it passes.
    """

    retry: RetryPolicy | None = None
    timeout: timedelta | None = None

    def __post_init__(self) -> None:
        if self.retry is not None and not callable(self.retry):
            raise InvalidTask("retry must be a callable taking a TaskContext.")
        if self.timeout is not None and (
            not isinstance(self.timeout, timedelta) or self.timeout <= timedelta(0)
        ):
            raise InvalidTask("timeout must be a positive timedelta.")
        DjangoTask.__post_init__(self)
