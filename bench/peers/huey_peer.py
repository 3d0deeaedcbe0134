"""Huey on Redis, default options (blocking pops)."""

import os

import bench_common
from huey import RedisHuey

huey = RedisHuey("bench", url=os.environ["BENCH_REDIS_URL"])


@huey.task()
def bench_task(kind: str, total: int, stamp: float) -> None:
    bench_common.run(kind, total, stamp)


def enqueue(kind: str, total: int, stamp: float) -> None:
    bench_task(kind, total, stamp)
