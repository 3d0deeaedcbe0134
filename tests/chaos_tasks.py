"""The task of the chaos run: it records each of its executions in a file, then works a little."""

import os
import random
import time
from datetime import timedelta

from django.tasks import TaskContext, task

from threadmill.retry import ExponentialBackoff


@task(
    takes_context=True,
    retry=ExponentialBackoff(
        base_delay=timedelta(milliseconds=50), max_delay=timedelta(seconds=1), max_retries=20
    ),
)
def recorded(context: TaskContext, number: int) -> int:
    # One short O_APPEND write per execution: atomic, and it survives any crash of Redis.
    line = f"{context.task_result.id} {os.getpid()} {context.attempt}\n".encode()
    fd = os.open(os.environ["THREADMILL_CHAOS_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)
    time.sleep(random.uniform(0, 0.004))
    return number
