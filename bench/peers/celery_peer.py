"""Celery with the Redis broker, prefork pool, no result backend.

Tuned as Celery's "Optimizing" guide says for many short tasks: a large prefetch multiplier,
results ignored; the worker runs without gossip, mingle and heartbeat (see bench/run.py).
"""

import os

import bench_common
from celery import Celery

app = Celery("bench", broker=os.environ["BENCH_REDIS_URL"])
app.conf.update(
    task_ignore_result=True,
    worker_prefetch_multiplier=64,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench_task")
def bench_task(kind: str, total: int, stamp: float) -> None:
    bench_common.run(kind, total, stamp)


def enqueue(kind: str, total: int, stamp: float) -> None:
    bench_task.delay(kind, total, stamp)
