"""Tasks the tests enqueue. Module level, as Django requires."""

import asyncio
import os
import time
from datetime import timedelta

from django.tasks import TaskContext, task

from threadmill.retry import ExponentialBackoff


@task
def noop() -> None:
    return None


@task
def add(a: int, b: int) -> int:
    return a + b


@task
def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


@task
async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


@task(takes_context=True)
def attempt_number(context: TaskContext) -> int:
    return context.attempt


@task
def fail(message: str = "boom") -> None:
    raise ValueError(message)


@task(retry=ExponentialBackoff(base_delay=timedelta(milliseconds=10), max_retries=2))
def always_fails_with_retries() -> None:
    raise ValueError("still broken")


@task(queue_name="high", priority=10)
def urgent() -> str:
    return "urgent"


@task
def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@task
def pid() -> int:
    return os.getpid()


def plain_function() -> str:
    """Not a task: a payload naming it must never run it."""
    raise AssertionError("a plain function was run from a stored payload")
