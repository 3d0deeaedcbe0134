"""Badly and well behaved tasks the pool's tests enqueue. Module level, as Django requires."""

import asyncio
import ctypes
import os
import time
from datetime import timedelta
from pathlib import Path

from django.tasks import TaskContext, task

from threadmill.retry import ExponentialBackoff

# Memory a task keeps alive in its worker process, for --max-memory.
_hoard: list[bytes] = []


@task
def add(a: int, b: int) -> int:
    return a + b


@task
async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


@task(takes_context=True)
def whoami(context: TaskContext) -> dict:
    return {"pid": os.getpid(), "attempt": context.attempt}


@task
def pid() -> int:
    return os.getpid()


@task
def note_run(path: str, label: int) -> int:
    """Append `label` to the file at `path` (one line per run), return the pid."""
    with open(path, "a") as log:
        log.write(f"{label}\n")
    return os.getpid()


@task
def big_value(size: int, label: int) -> str:
    return str(label) * size


@task
def sleep_then_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


@task
def wait_for_file(path: str, seconds: float = 30.0) -> int:
    """Run until `path` exists (the test's go-ahead), then return the pid."""
    deadline = time.monotonic() + seconds
    while not Path(path).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return os.getpid()


@task
def touch_then_wait_for_file(started: str, go: str) -> int:
    """Say it started (create `started`), then run until `go` exists; return the pid."""
    Path(started).touch()
    return wait_for_file.call(go)


@task
def touch_then_sleep(path: str, seconds: float) -> int:
    """Say it started (create `path`), then take `seconds`."""
    Path(path).touch()
    time.sleep(seconds)
    return os.getpid()


@task
def segfault() -> None:
    ctypes.string_at(0)


@task
def hard_exit(code: int = 7) -> None:
    os._exit(code)


@task
def raise_system_exit() -> None:
    raise SystemExit(3)


@task
def raise_keyboard_interrupt() -> None:
    raise KeyboardInterrupt


@task
def return_not_json() -> object:
    return object()


@task(timeout=timedelta(seconds=1))
def spin_forever() -> None:
    while True:
        pass


@task(timeout=timedelta(seconds=1))
def spin_swallowing_exceptions() -> None:
    while True:
        try:
            while True:
                pass
        except Exception:
            pass


@task(timeout=timedelta(seconds=1))
def stuck_in_c(path: str) -> None:
    """Hold on in C past the timeout: the exception raised in the thread cannot land."""
    Path(path).touch()
    time.sleep(60)


@task
def hold_the_gil(path: str) -> None:
    """Hold the GIL in C (a catastrophic regex backtrack): no thread of the process runs."""
    import re

    Path(path).touch()
    re.match(r"(a+)+$", "a" * 64 + "b")


@task(retry=ExponentialBackoff(base_delay=timedelta(milliseconds=200), max_retries=2))
def flaky(marker_dir: str) -> str:
    """Fail twice, then succeed; each attempt leaves a file stamped with its time."""
    attempts = len(list(Path(marker_dir).iterdir()))
    (Path(marker_dir) / f"attempt-{attempts + 1}").write_text(repr(time.time()))
    if attempts < 2:
        raise ValueError(f"attempt {attempts + 1} fails")
    return "third time lucky"


@task(retry=ExponentialBackoff(base_delay=timedelta(milliseconds=100), max_retries=1))
def crash_with_retry() -> None:
    os._exit(9)


@task
def hoard_memory(megabytes: int) -> int:
    _hoard.append(b"x" * (megabytes * 2**20))
    return os.getpid()
