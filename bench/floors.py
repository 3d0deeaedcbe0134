"""What this machine allows any worker, measured without a task queue: the floors under the
benchmark's figures.

    python bench/floors.py     (run by run.py in threadmill's Python; prints one JSON line)

Needs BENCH_REDIS_URL (a private server) and DJANGO_SETTINGS_MODULE=peers.settings_threadmill.
Each figure is the cheapest form of one step every peer pays for, timed in a bare loop:

- `body`: the task body alone (`bench_common.run`, one INCR), called in a loop: no worker of
  any kind can drain no-op tasks faster, nor spend less CPU per task;
- `execute`: the same body run as a leased django.tasks task by `threadmill.execution` (the
  task_started / task_finished signals, the finished TaskResult): what running a Django task
  costs over the body, with no queue at all;
- `django_enqueue`: `Task.enqueue` on a backend that stores nothing and does only what
  Django asks of every backend (validate the task, build its TaskResult, send
  task_enqueued); `round_trip` is one INCR round trip, the least a Redis-backed enqueue adds;
- `wake`: how long a process blocked in BLPOP takes to receive an item another process
  pushes, idle in between as in the pickup figure (50-150 ms): the floor of idle pickup.
"""

import json
import os
import random
import statistics
import sys
import time

import bench_common

LOOPS = 3000
WAKES = 100


def timed(call, loops: int = LOOPS) -> dict:
    """Rate and CPU per call of `call()` in a loop (after a warm-up)."""
    for _ in range(50):
        call()
    cpu, wall = time.thread_time(), time.perf_counter()
    for _ in range(loops):
        call()
    wall = time.perf_counter() - wall
    return {"rate": loops / wall, "cpu_us": (time.thread_time() - cpu) / loops * 1e6}


def wake_latencies(count: int) -> list[float]:
    """Seconds from RPUSH in this process to BLPOP's return in a child, idle in between."""
    r = bench_common.client()
    pid = os.fork()
    if pid == 0:
        child = __import__("redis").Redis.from_url(os.environ["BENCH_REDIS_URL"])
        for _ in range(count):
            _, stamp = child.blpop(["floors:wake"])
            child.rpush("floors:latency", repr(time.time() - float(stamp)))
        os._exit(0)
    found = []
    for _ in range(count):
        time.sleep(random.uniform(0.05, 0.15))
        r.rpush("floors:wake", repr(time.time()))
        found.append(float(r.blpop(["floors:latency"], timeout=30)[1]))
    os.waitpid(pid, 0)
    return found


def stores_nothing():
    """A task backend class that does what Django asks of an enqueue, and stores nothing."""
    from django.tasks import TaskResult, TaskResultStatus
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.signals import task_enqueued
    from django.utils import timezone

    class StoresNothing(BaseTaskBackend):
        supports_defer = supports_async_task = supports_priority = True

        def enqueue(self, task, args, kwargs):
            self.validate_task(task)
            result = TaskResult(
                task=task,
                id=os.urandom(16).hex(),
                status=TaskResultStatus.READY,
                enqueued_at=timezone.now(),
                started_at=None,
                last_attempted_at=None,
                finished_at=None,
                args=args,
                kwargs=kwargs,
                backend=self.alias,
                errors=[],
                worker_ids=[],
            )
            task_enqueued.send(type(self), task_result=result)
            return result

    return StoresNothing


def main() -> None:
    import django

    django.setup()
    from django.tasks import task_backends
    from peers.django_tasks import bench_task

    from threadmill.execution import execute

    StoresNothing = stores_nothing()

    r = bench_common.client()
    r.ping()
    floors = {"body": timed(lambda: bench_common.run("noop", 0, 0.0))}

    backend = task_backends["default"]
    bench_task.enqueue("noop", 0, 0.0)
    leased = backend.acquire(timeout=5, worker_id="floors")
    floors["execute"] = timed(lambda: execute(leased, type(backend)))

    nothing = StoresNothing("floors", {"QUEUES": [], "OPTIONS": {}})
    floors["django_enqueue"] = timed(lambda: nothing.enqueue(bench_task, ("noop", 0, 0.0), {}))
    floors["round_trip"] = timed(lambda: r.incr("floors:x"))

    latencies = sorted(wake_latencies(WAKES))
    floors["wake"] = {
        "p50_ms": statistics.median(latencies) * 1e3,
        "p95_ms": latencies[int(0.95 * (len(latencies) - 1))] * 1e3,
    }
    print(json.dumps(floors))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
