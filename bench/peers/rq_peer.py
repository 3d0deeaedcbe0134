"""RQ with its default Worker, started from a script that imports the task first (RQ's
performance notes), so each forked work horse does not import it again."""

import os

import bench_common
from redis import Redis

_queue = None


def bench_task(kind: str, total: int, stamp: float) -> None:
    bench_common.run(kind, total, stamp)


def queue():
    global _queue
    if _queue is None:
        from rq import Queue

        _queue = Queue("default", connection=Redis.from_url(os.environ["BENCH_REDIS_URL"]))
    return _queue


def enqueue(kind: str, total: int, stamp: float) -> None:
    queue().enqueue(bench_task, kind, total, stamp)


def work() -> None:
    from rq import Worker

    connection = Redis.from_url(os.environ["BENCH_REDIS_URL"])
    worker_class = Worker
    if os.environ.get("BENCH_RQ_WORKER") == "simple":
        from rq import SimpleWorker as worker_class
    worker_class(["default"], connection=connection).work(logging_level="WARNING")
