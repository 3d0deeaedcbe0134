"""Errors that threadmill records as the outcome of a task, or raises to its callers."""

from django.tasks.exceptions import TaskException


class AcknowledgementTimeout(Exception):
    """The task's lease ran out, or its pool died, before a result was acknowledged."""


class WorkerLost(Exception):
    """The worker process running the task died (a signal or an exit code) before it finished."""


class TaskTimeout(Exception):
    """The task ran past its timeout and was stopped."""


class InvalidTaskPath(TaskException):
    """A stored task names something that is not a `django.tasks.Task`; nothing was run."""


class InvalidReturnValue(Exception):
    """The task returned a value that cannot be stored as JSON."""


class LeaseLost(TaskException):
    """The lease of a task is no longer held by the caller, so its outcome was not recorded."""


class BackendUnavailable(TaskException):
    """The backend's server cannot be reached; nothing was written."""
