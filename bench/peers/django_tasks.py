"""The benchmark task for Django's task framework (threadmill, django-tasks-db)."""

import bench_common
from django.tasks import task


@task
def bench_task(kind: str, total: int, stamp: float) -> None:
    bench_common.run(kind, total, stamp)


def setup() -> None:
    import django

    django.setup()


def enqueue(kind: str, total: int, stamp: float) -> None:
    bench_task.enqueue(kind, total, stamp)
