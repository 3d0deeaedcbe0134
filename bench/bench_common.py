"""The task body every peer runs, and the Redis keys the benchmark reads.

Imported by the driver and inside every peer's own virtualenv, so it needs only redis-py and the
standard library. The Redis server is the benchmark's private one (BENCH_REDIS_URL).
"""

import os
import time

DONE = "bench:done"  # INCR per finished task: the drain counter
FIRST = "bench:first"  # when the first task finished (noop), or started (burn)
LAST = "bench:last"  # when task number `total` finished
CPU_NS = "bench:cpu_ns"  # summed CPU time of the task bodies (burn)
LATENCY = "bench:latency"  # enqueue -> start delays, seconds (latency)

# CPU each burn task spends, in nanoseconds of its own thread's CPU time.
BURN_NS = int(float(os.environ.get("BENCH_BURN_SECONDS", "0.005")) * 1e9)

_client = None
_client_pid = None


def client():
    """One connection per process, opened on first use (after any fork of the worker)."""
    global _client, _client_pid
    if _client is None or _client_pid != os.getpid():
        import redis

        _client = redis.Redis.from_url(os.environ["BENCH_REDIS_URL"])
        _client_pid = os.getpid()
    return _client


def machine_idle() -> tuple[int, int]:
    """(idle, all) clock ticks of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as stat:
        ticks = [int(value) for value in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal; guest time is counted in user already.
    return ticks[3] + ticks[4], sum(ticks[:8])


def run(kind: str, total: int, stamp: float) -> None:
    """The task body: `noop` is one INCR; `burn` adds ~5 ms of CPU; `latency` records its delay.

    `stamp` is the wall-clock time (time.time()) at which the task was enqueued.
    """
    started = time.time()
    r = client()
    if kind == "latency":
        r.rpush(LATENCY, repr(started - stamp))
        return
    if kind == "burn":
        cpu = time.thread_time_ns()
        while time.thread_time_ns() - cpu < BURN_NS:
            pass
        # Task CPU is the burn; the INCR that reports it (one round trip, the same for every
        # peer) is left in the overhead figure, and measured alone by the driver for reference.
        used = time.thread_time_ns() - cpu
        pipe = r.pipeline(transaction=False)
        pipe.incr(DONE)
        pipe.incrby(CPU_NS, used)
        done = pipe.execute()[0]
        if done == 1:
            r.set(FIRST, repr(started))
    else:
        done = r.incr(DONE)
        if done == 1:
            r.set(FIRST, repr(time.time()))
    if done == total:
        r.set(LAST, repr(time.time()))
