"""The task of the chaos run: it records each of its executions in a file, then works a little."""

import os
import random
import time
from datetime import timedelta

from django.tasks import TaskContext, task

from threadmill.retry import ExponentialBackoff


def _record(line: str) -> None:
    # One short O_APPEND write: atomic between processes, and it survives any crash of Redis.
    fd = os.open(os.environ["THREADMILL_CHAOS_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


@task(
    takes_context=True,
    retry=ExponentialBackoff(
        base_delay=timedelta(milliseconds=50), max_delay=timedelta(seconds=1), max_retries=20
    ),
)
def recorded(context: TaskContext, number: int) -> int:
    _record(f"{context.task_result.id} {os.getpid()} {context.attempt}\n")
    time.sleep(random.uniform(0, 0.004))
    return number


@task(takes_context=True)
def timed(context: TaskContext, seconds: float) -> float:
    """Record when each execution starts and ends, to find two running at the same time."""
    _record(f"S {context.task_result.id} {time.time():.6f}\n")
    time.sleep(seconds)
    _record(f"E {context.task_result.id} {time.time():.6f}\n")
    return seconds
