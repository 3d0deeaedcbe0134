"""What this machine allows any worker, measured without a task queue: the floors under the
benchmark's figures.

    python bench/floors.py [--quick]   (run by run.py in threadmill's Python; prints one JSON
                                        line; --quick: few loops, for a smoke run)

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
  pushes, idle in between as in the pickup figure (50-150 ms).

The steps above are parts of a worker; the floors below are whole ones, cut down to the least
that any Redis-backed worker for django.tasks must do. None keeps a lease or survives a crash,
so each is faster than a durable queue can be. Rates and CPU are the best of REPEATS tries:

- `queue_loop`: one thread drains no-op tasks in batches of BATCH: one LPOP brings BATCH
  payloads, each becomes its TaskResult and runs as a Django task, and one pipelined round
  trip stores the BATCH results. `user_us` is the CPU per task spent out of the kernel, where
  the GIL is held: Python runs on one core at a time in a process, so it bounds one
  process's rate however its threads hide their waits. `queue_loop_N_threads`: the same in N
  threads of one process sharing the work, which hide one another's waits but take turns
  at the GIL;
- `push_enqueue`: `Task.enqueue` on a backend that does what Django asks, encodes the payload
  and RPUSHes it: one round trip, no id check, no status. The floor of enqueue;
- `django_wake`: idle pickup through that enqueue and a process blocked in BLPOP that builds
  the TaskResult and runs it as a Django task; the task notes enqueue -> start as in the
  pickup figure (WAKES pickups). The floor of idle pickup;
- `queue_scaling`: the least queue drained by one process, then by two side by side, each
  in one thread (the best rate of each): what a second process adds on these cores to a queue
  that makes the same INCR round trip per task as every worker, but asks almost nothing more
  of Redis. With two, how idle the machine stayed and how much CPU Redis spent per task.
  Shown for information: a ratio bounds no other ratio (a worker that waits more per task
  leaves more room for a second one).

Like Django's own backends, these enqueues validate the task again (2-3 µs); and `execute`
closes the connections a task left unusable, as a worker must (none here).
"""

import contextlib
import json
import os
import random
import resource
import signal
import statistics
import sys
import threading
import time

import bench_common

QUICK = "--quick" in sys.argv[1:]
LOOPS = 300 if QUICK else 3000
WAKES = 10 if QUICK else 100
REPEATS = 1 if QUICK else 3
BATCH = 16
QUEUE_TASKS = 500 if QUICK else 10_000
QUEUE_THREADS = (2, 4)


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
    return pickups(
        count,
        "floors:wake",
        lambda: r.rpush("floors:wake", repr(time.time())),
        lambda child, stamp: child.rpush(bench_common.LATENCY, repr(time.time() - float(stamp))),
    )


def pickups(count: int, wait_key: str, send, handle) -> list[float]:
    """`count` delays, idle 50-150 ms before each as in the pickup figure: `send()` pushes one
    item to `wait_key`; a child blocked in BLPOP on it calls `handle(its client, the item)`,
    which pushes the delay to bench_common.LATENCY."""
    r = bench_common.client()
    r.delete(wait_key, bench_common.LATENCY)
    pid = os.fork()
    if pid == 0:
        try:
            child = __import__("redis").Redis.from_url(os.environ["BENCH_REDIS_URL"])
            for _ in range(count):
                popped = child.blpop([wait_key], timeout=30)
                if popped is None:
                    break
                handle(child, popped[1])
        finally:
            os._exit(0)
    found = []
    try:
        for _ in range(count):
            time.sleep(random.uniform(0.05, 0.15))
            send()
            reply = r.blpop([bench_common.LATENCY], timeout=30)
            if reply is None:
                raise SystemExit(f"a pickup from {wait_key} did not start within 30 s")
            found.append(float(reply[1]))
    finally:
        reap(pid)
    return found


def percentiles_ms(latencies: list[float]) -> dict:
    latencies = sorted(latencies)
    return {
        "p50_ms": statistics.median(latencies) * 1e3,
        "p95_ms": latencies[int(0.95 * (len(latencies) - 1))] * 1e3,
    }


def best_of(measure) -> dict:
    """The best of REPEATS measurements: a floor is what the machine allows at best."""
    return best_figures([measure() for _ in range(REPEATS)])


def best_figures(measured: list[dict]) -> dict:
    """The best each figure was seen at: the highest rate, the least CPU or time (a figure
    missing from some measurements is taken from the others)."""
    names = dict.fromkeys(name for one in measured for name in one)
    return {
        name: (max if name == "rate" else min)(one[name] for one in measured if name in one)
        for name in names
    }


def pushes_payload(stores_nothing_class, r):
    """A backend that does what Django asks of an enqueue, then RPUSHes the payload."""
    from threadmill.backends.serialization import encode_payload

    class PushesPayload(stores_nothing_class):
        def enqueue(self, task, args, kwargs):
            result = super().enqueue(task, args, kwargs)
            r.rpush(
                TASKS, encode_payload(task, result.args, result.kwargs) + b"\n" + result.id.encode()
            )
            return result

    return PushesPayload("floors", {"QUEUES": [], "OPTIONS": {}})


TASKS = "floors:tasks"
RESULTS = "floors:results"


def leased_result(raw: bytes):
    """The TaskResult a pushed payload stands for, built the cheapest way we know."""
    from threadmill.backends.serialization import StoredTask, to_task_result

    payload, task_id = raw.rsplit(b"\n", 1)
    return to_task_result(StoredTask(task_id.decode(), payload, "RUNNING"), "floors")


def queue_loop(r, bench_task, pushes, threads: int = 1) -> dict:
    """Drain QUEUE_TASKS pushed tasks in batches of BATCH, in `threads` threads side by side:
    rate, CPU per task of the process (user + system, and user alone)."""
    push_tasks(r, bench_task, pushes)

    drains = [threading.Thread(target=drain, args=(r, pushes)) for _ in range(threads)]
    user = resource.getrusage(resource.RUSAGE_SELF).ru_utime
    cpu, wall = time.process_time(), time.perf_counter()
    for thread in drains:
        thread.start()
    for thread in drains:
        thread.join()
    wall = time.perf_counter() - wall
    user = resource.getrusage(resource.RUSAGE_SELF).ru_utime - user
    done = r.hlen(RESULTS)
    r.delete(RESULTS)
    return {
        "rate": done / wall,
        "cpu_us": (time.process_time() - cpu) / done * 1e6,
        "user_us": user / done * 1e6,
    }


def push_tasks(r, bench_task, pushes) -> None:
    """Empty the least queue and its results, then enqueue QUEUE_TASKS no-op tasks into it."""
    r.delete(TASKS, RESULTS)
    for _ in range(QUEUE_TASKS):
        pushes.enqueue(bench_task, ("noop", 0, 0.0), {})


def drain(r, pushes) -> None:
    """The least queue's worker: take BATCH tasks, run them, store their results; until none
    is left."""
    from threadmill.execution import execute

    while raws := r.lpop(TASKS, BATCH):
        finished = [execute(leased_result(raw), type(pushes)) for raw in raws]
        pipe = r.pipeline(transaction=False)
        for result in finished:
            pipe.hset(RESULTS, result.id, "null")
        pipe.execute()


def django_wakes(count: int, bench_task, pushes) -> list[float]:
    """Seconds from `Task.enqueue` (pushing the payload) to the task's start in a child
    blocked in BLPOP, idle in between as in the pickup figure."""
    from threadmill.execution import execute

    return pickups(
        count,
        TASKS,
        lambda: pushes.enqueue(bench_task, ("latency", 0, time.time()), {}),
        lambda child, raw: execute(leased_result(raw), type(pushes)),
    )


def reap(pid: int) -> None:
    """End a child that may still wait for what will not come, and collect it."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def queue_scaling(r, bench_task, pushes) -> dict:
    """The least queue's rate drained by one process, then by two side by side, and their
    ratio; with two, the machine's idle share and Redis's CPU per task."""
    one = drain_in_processes(r, bench_task, pushes, 1)
    two = drain_in_processes(r, bench_task, pushes, 2)
    return {
        "one": one["rate"],
        "two": two["rate"],
        "ratio": two["rate"] / one["rate"],
        "idle": two["idle"],
        "redis_us": two["redis_us"],
    }


def drain_in_processes(r, bench_task, pushes, processes: int) -> dict:
    """Push QUEUE_TASKS tasks, drain them with `processes` forked processes that start
    together; rate, machine idle share and Redis CPU per task over the drain."""
    push_tasks(r, bench_task, pushes)
    start = time.time() + 0.2  # both begin together, after both forks
    children = []
    for _ in range(processes):
        pid = os.fork()
        if pid == 0:
            try:
                own = __import__("redis").Redis.from_url(os.environ["BENCH_REDIS_URL"])
                time.sleep(max(0.0, start - time.time()))
                drain(own, pushes)
            finally:
                os._exit(0)
        children.append(pid)
    time.sleep(max(0.0, start - time.time()))
    idle, redis_cpu, wall = bench_common.machine_idle(), server_cpu(r), time.perf_counter()
    for pid in children:
        os.waitpid(pid, 0)
    wall = time.perf_counter() - wall
    idle_after, redis_after = bench_common.machine_idle(), server_cpu(r)
    done = r.hlen(RESULTS)
    r.delete(RESULTS)
    if not done:
        raise SystemExit("the least queue ran no task in the scaling floor")
    return {
        "rate": done / wall,
        "idle": (idle_after[0] - idle[0]) / max(1, idle_after[1] - idle[1]),
        "redis_us": (redis_after - redis_cpu) / done * 1e6,
    }


def server_cpu(r) -> float:
    """CPU seconds the Redis server has spent so far."""
    info = r.info("cpu")
    return info["used_cpu_user"] + info["used_cpu_sys"]


def best_scaling(measured: list[dict]) -> dict:
    """The best rate seen in one process and in two, and their ratio: the pair of a single try
    can have caught the machine at different speeds. Other figures come from the try with
    the best rate in two."""
    fastest = max(measured, key=lambda m: m["two"])
    one = max(m["one"] for m in measured)
    return {**fastest, "one": one, "ratio": fastest["two"] / one}


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

    floors["wake"] = percentiles_ms(wake_latencies(WAKES))

    pushes = pushes_payload(StoresNothing, r)
    floors["push_enqueue"] = best_of(
        lambda: timed(lambda: pushes.enqueue(bench_task, ("noop", 0, 0.0), {}))
    )
    floors["queue_loop"] = best_of(lambda: queue_loop(r, bench_task, pushes))
    for threads in QUEUE_THREADS:
        floors[f"queue_loop_{threads}_threads"] = best_of(
            lambda threads=threads: queue_loop(r, bench_task, pushes, threads)
        )
    floors["django_wake"] = percentiles_ms(django_wakes(WAKES, bench_task, pushes))
    floors["queue_scaling"] = best_scaling(
        [queue_scaling(r, bench_task, pushes) for _ in range(REPEATS)]
    )
    print(json.dumps(floors))


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
