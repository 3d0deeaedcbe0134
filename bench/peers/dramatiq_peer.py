"""Dramatiq with its Redis broker, default middleware."""

import os

import bench_common
import dramatiq
from dramatiq.brokers.redis import RedisBroker

broker = RedisBroker(url=os.environ["BENCH_REDIS_URL"])
dramatiq.set_broker(broker)


@dramatiq.actor(max_retries=0)
def bench_task(kind: str, total: int, stamp: float) -> None:
    bench_common.run(kind, total, stamp)


def enqueue(kind: str, total: int, stamp: float) -> None:
    bench_task.send(kind, total, stamp)
