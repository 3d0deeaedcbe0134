"""A worker process: one fetcher thread leases tasks, executor threads run them.

Everything here runs in a child the arbiter forked, and `run()` never returns: it ends with
`os._exit`, so the arbiter's stack (its loop, its `finally` blocks) never unwinds in a child.

Threads and what they own:
- the *fetcher* leases up to `threads + prefetch` tasks at a time in one backend call and
  puts them in `buffer`; it tells the arbiter their ids *before* any can start;
- the *executors* take tasks from `buffer`, run them (`threadmill.execution`) and publish the
  outcome (acknowledge, or retry per the task's policy);
- the *main thread* waits for signals, sends heartbeats to the arbiter and raises `_Deadline`
  in an executor whose task ran past its timeout. It runs no task code, so a heartbeat stops
  only when the whole process stops making progress (stuck in C, holding the GIL).

Stop order (SIGTERM, recycling, the arbiter gone): stop leasing first and wait for the lease
call in flight, because a lease taken after we looked would otherwise be lost; then release
what was never started; running tasks finish and are published before the process exits.
"""

import ctypes
import itertools
import logging
import math
import os
import random
import select
import signal
import socket
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from typing import NoReturn

from django.tasks import TaskResult, TaskResultStatus
from django.tasks.base import TaskError
from django.utils import timezone

from threadmill.backends.base import AcknowledgeableTaskBackend, retry_delay
from threadmill.exceptions import TaskTimeout
from threadmill.execution import execute
from threadmill.outcomes import failed
from threadmill.pool import titles
from threadmill.pool.config import (
    FETCH_TIMEOUT,
    HEARTBEAT_INTERVAL,
    TIMEOUT_GRACE,
    WORKER_BOOT_ERROR,
    PoolConfig,
)
from threadmill.pool.control import ControlWriter
from threadmill.retry import backoff_delay

logger = logging.getLogger("threadmill.worker")

# Objects inherited from the arbiter that the child must neither use nor garbage-collect:
# collecting a database connection could close the socket the arbiter still uses.
_inherited: list[object] = []


class _Deadline(BaseException):
    """Raised inside a task's thread when it passes its timeout.

    A BaseException, so that a task's `except Exception:` cannot swallow it; it is recorded as
    `threadmill.exceptions.TaskTimeout`.
    """


_DEADLINE_PATH = f"{_Deadline.__module__}.{_Deadline.__qualname__}"


@dataclass(slots=True)
class _Clock:
    task_id: str
    timeout: float
    deadline: float  # time.monotonic()
    fired: bool = False


class WorkerProcess:
    """One forked worker process of a pool."""

    def __init__(
        self, config: PoolConfig, pool_id: str, control_fd: int, arbiter_pid: int, number: int
    ) -> None:
        self.config = config
        self.pool_id = pool_id
        self.control = ControlWriter(control_fd)
        self.arbiter_pid = arbiter_pid
        self.number = number
        self.pid = os.getpid()
        self.worker_id = f"{socket.gethostname()}:{self.pid}:fetcher"
        self.backend: AcknowledgeableTaskBackend

        # `cond` guards everything below it: the leased, unstarted tasks and the counters.
        self.cond = threading.Condition()
        self.buffer: deque[TaskResult] = deque()
        self.held = 0  # leased and not yet published or released: buffered + running
        self.limit = config.threads + config.prefetch
        budget = math.inf
        if config.max_tasks is not None:
            budget = config.max_tasks + random.randint(0, config.max_tasks_jitter)
        self.budget: float = budget  # leases this process may still take
        self.stopping = False
        self.fetcher_done = False
        self.running: dict[int, str] = {}  # thread ident -> task path, for the process title

        # `clock_lock` guards `clocks`; the main thread fires a clock only while holding it.
        self.clock_lock = threading.Lock()
        self.clocks: dict[int, _Clock] = {}

        self.signals: deque[int] = deque()
        self.threads: list[threading.Thread] = []

    # --- life -------------------------------------------------------------------------------

    def run(self) -> NoReturn:
        """Boot, serve until told to stop, exit. Never returns."""
        code = 1
        try:
            try:
                self._boot()
            except BaseException:
                reason = traceback.format_exc()
                logger.error("Worker process %s failed to boot:\n%s", self.pid, reason)
                self.control.send(boot_error=reason)
                code = WORKER_BOOT_ERROR
            else:
                code = self._serve()
        except BaseException:
            logger.exception("Worker process %s crashed", self.pid)
        finally:
            logging.shutdown()
            os._exit(code)

    def _boot(self) -> None:
        # Child side of the fork: take the signals back from the arbiter's handlers.
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        self.wake_fd = wake_r
        for sig in (signal.SIGCHLD, signal.SIGHUP, signal.SIGTTIN, signal.SIGTTOU, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        # Ctrl-C reaches the whole process group; the arbiter decides what it means for us.
        # A no-op handler, not SIG_IGN, so that subprocesses of tasks get the default back.
        signal.signal(signal.SIGINT, lambda signum, frame: None)
        signal.signal(signal.SIGTERM, self._queue_signal)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        # The arbiter blocked signals across the fork; a SIGTERM that came meanwhile lands now.
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        titles.set_title(f"worker process {self.number} [booting]")

        _forget_inherited_connections()
        from django.tasks import task_backends
        from django.utils.module_loading import autodiscover_modules

        backend = task_backends[self.config.backend_alias]
        if not isinstance(backend, AcknowledgeableTaskBackend):
            raise TypeError(f"{type(backend).__name__} is not an AcknowledgeableTaskBackend")
        self.backend = backend
        # Import every app's tasks module now: an error in the code fails the boot, where the
        # arbiter notices it and backs off, instead of failing task after task.
        autodiscover_modules("tasks")

        self.threads.append(threading.Thread(target=self._fetch, name="fetcher", daemon=True))
        for index in range(self.config.threads):
            self.threads.append(
                threading.Thread(target=self._execute, name=f"executor-{index}", daemon=True)
            )
        for thread in self.threads:
            thread.start()
        self.control.send(booted=True)
        self._title()

    def _queue_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)  # nothing else: the main loop acts on it

    def _serve(self) -> int:
        next_heartbeat = 0.0
        while any(thread.is_alive() for thread in self.threads):
            now = time.monotonic()
            if now >= next_heartbeat:
                self.control.send(heartbeat=True)
                next_heartbeat = now + HEARTBEAT_INTERVAL
            wait = min(next_heartbeat, self._fire_clocks()) - time.monotonic()
            ready, _, _ = select.select([self.wake_fd], [], [], max(0.0, min(wait, 0.5)))
            if ready:
                os.read(self.wake_fd, 512)
            while self.signals:
                if self.signals.popleft() == signal.SIGTERM:
                    self.stop("it received SIGTERM")
            if os.getppid() != self.arbiter_pid or self.control.broken:
                self.stop("its arbiter is gone")
        # Every thread is done, so nothing can start or lease any more: give back the rest.
        self._release_buffer()
        return 0

    def stop(self, reason: str, retiring: bool = False) -> None:
        """Stop leasing and starting tasks; running ones finish, the rest is released."""
        with self.cond:
            if self.stopping:
                return
            self.stopping = True
            self.cond.notify_all()
        logger.info("Worker process %s stops because %s", self.pid, reason)
        if retiring:
            self.control.send(retiring=True)

    # --- fetcher thread -------------------------------------------------------------------

    def _fetch(self) -> None:
        pause = 0.0
        try:
            while True:
                with self.cond:
                    while not self.stopping and self.budget > 0 and not self._wants_more():
                        self.cond.wait()
                    if self.stopping or self.budget <= 0:
                        break
                    count = int(min(self.limit - self.held, self.budget))
                try:
                    leased = self.backend.acquire_many(
                        *self.config.queues,
                        count=count,
                        timeout=FETCH_TIMEOUT,
                        worker_id=self.worker_id,
                        pool_id=self.pool_id,
                    )
                except Exception:
                    pause = min(5.0, pause * 2 or 0.1)
                    logger.exception("Leasing tasks failed; trying again in %.1fs", pause)
                    with self.cond:
                        self.cond.wait_for(lambda: self.stopping, timeout=pause)
                    continue
                pause = 0.0
                if not leased:
                    continue
                # Before the tasks can start: the arbiter must know what to clean up if we die.
                self.control.send(leased=[result.id for result in leased])
                with self.cond:
                    self.buffer.extend(leased)
                    self.held += len(leased)
                    self.budget -= len(leased)
                    self.cond.notify_all()
        finally:
            with self.cond:
                self.fetcher_done = True
                exhausted = self.budget <= 0 and not self.stopping
                self.cond.notify_all()
            if exhausted:
                logger.info("Worker process %s leased its --max-tasks; retiring", self.pid)
                self.control.send(retiring=True)

    def _wants_more(self) -> bool:
        # Refill in batches: wait until half the prefetch is used up (or a thread is idle), so
        # one round trip leases many tasks instead of one round trip per finished task.
        if self.held >= self.limit:
            return False
        return len(self.buffer) <= self.config.prefetch // 2 or self.held < self.config.threads

    # --- executor threads -----------------------------------------------------------------

    def _execute(self) -> None:
        from django.db import connections

        try:
            while True:
                with self.cond:
                    while not self.buffer and not self.stopping and not self.fetcher_done:
                        self.cond.wait()
                    if self.stopping or not self.buffer:
                        return
                    leased = self.buffer.popleft()
                    self.running[threading.get_ident()] = leased.task.module_path
                    # The buffer shrank: the fetcher may want to refill it now, not only when a
                    # task ends (a long task would otherwise starve the prefetch).
                    self.cond.notify_all()
                try:
                    self._run(leased)
                finally:
                    with self.cond:
                        del self.running[threading.get_ident()]
                        self.held -= 1
                        self.cond.notify_all()
                    self._title()
                self._check_memory()
        finally:
            connections.close_all()  # this thread's own connections

    def _run(self, leased: TaskResult) -> None:
        ident = threading.get_ident()
        timeout = self._timeout_of(leased)
        self.control.send(started=leased.id, timeout=timeout)
        self._title()
        started = time.monotonic()
        with self.clock_lock:
            self.clocks[ident] = _Clock(leased.id, timeout, started + timeout)
        try:
            try:
                finished = execute(leased, type(self.backend))
            finally:
                self._stop_clock(ident)
        except _Deadline as error:
            # It landed after the task's own code returned: the task still ran out of time.
            from threadmill.backends.serialization import error_from_exception

            finished = failed(leased, error_from_exception(error))
        if finished.errors and finished.errors[-1].exception_class_path == _DEADLINE_PATH:
            finished.errors[-1] = _timeout_error(finished.errors[-1], timeout)
        status = self._publish(finished)
        self.control.send(finished=leased.id)
        duration = time.monotonic() - started
        logger.info(
            "Task %s %s %s in %.3fs",
            leased.id,
            leased.task.module_path,
            status,
            duration,
            extra={
                "task_id": leased.id,
                "task_path": leased.task.module_path,
                "status": status,
                "duration": round(duration, 6),
                "attempt": len(leased.worker_ids),
            },
        )

    def _timeout_of(self, leased: TaskResult) -> float:
        """Seconds the task may run from now: its own timeout, else --timeout, within the lease."""
        lease_ttl = self.backend.lease_ttl
        # Leave the arbiter time to kill and settle before the lease itself runs out. The
        # arbiter's heartbeat renews the lease while the task waits in the buffer, so the lease
        # is counted from now, when the task starts, not from when it was leased.
        margin = min(lease_ttl / 2, TIMEOUT_GRACE + 3 * self.backend.broker_interval)
        lease_left = lease_ttl - margin
        own = getattr(leased.task, "timeout", None)
        limit = own.total_seconds() if own is not None else self.config.timeout
        return max(0.0, lease_left if limit is None else min(limit, lease_left))

    def _stop_clock(self, ident: int) -> None:
        while True:
            try:
                with self.clock_lock:
                    self.clocks.pop(ident, None)
                return
            except _Deadline:
                # Fired just as the task ended; it has been counted as a timeout or not at all.
                continue

    def _publish(self, finished: TaskResult) -> str:
        """Acknowledge a finished task, or schedule its retry; return the status to log.

        While the backend is unreachable the outcome is held and sent again with backoff, for
        as long as it takes: a result is never dropped. (The backend's own client already
        retries a few times; this outlasts a longer outage, such as a Redis restart.)
        """
        delay = None
        if finished.status == TaskResultStatus.FAILED:
            delay = retry_delay(finished)  # once: a policy with side effects runs once
        for attempt in itertools.count():
            try:
                if delay is not None:
                    self.backend.retry(finished, timezone.now() + delay)
                    return f"FAILED, retry in {delay.total_seconds():g}s"
                self.backend.acknowledge(finished, by_holder=True)
                return str(finished.status)
            except Exception:
                pause = backoff_delay(attempt + 1, 0.1, 2.0, 5.0)
                logger.warning(
                    "Publishing the outcome of task %s failed; holding it, next try in %gs",
                    finished.id,
                    pause,
                    exc_info=attempt == 0,
                )
                time.sleep(pause)
        raise AssertionError("unreachable")

    def _check_memory(self) -> None:
        if self.config.max_memory is None:
            return
        rss = resident_memory()
        if rss > self.config.max_memory:
            self.stop(
                f"its memory ({rss // 2**20} MB) passed --max-memory "
                f"({self.config.max_memory // 2**20} MB)",
                retiring=True,
            )

    # --- main thread ----------------------------------------------------------------------

    def _fire_clocks(self) -> float:
        """Interrupt tasks past their deadline; return when the next deadline falls."""
        now = time.monotonic()
        next_deadline = now + 3600
        with self.clock_lock:
            for ident, clock in self.clocks.items():
                if clock.fired:
                    continue
                if now >= clock.deadline:
                    # Under clock_lock, so the executor cannot have left the task's clock yet:
                    # the exception lands in the task or, at the latest, in `_stop_clock`.
                    clock.fired = True
                    ctypes.pythonapi.PyThreadState_SetAsyncExc(
                        ctypes.c_ulong(ident), ctypes.py_object(_Deadline)
                    )
                    logger.warning(
                        "Task %s ran past its timeout of %gs; stopping it",
                        clock.task_id,
                        clock.timeout,
                    )
                else:
                    next_deadline = min(next_deadline, clock.deadline)
        return next_deadline

    def _release_buffer(self) -> None:
        with self.cond:
            unstarted = list(self.buffer)
            self.buffer.clear()
        released = []
        for result in unstarted:
            try:
                self.backend.release(result)
                released.append(result.id)
            except Exception:
                # The arbiter still counts it as ours and releases it when we are gone.
                logger.exception("Could not release task %s", result.id)
        if released:
            self.control.send(released=released)
            logger.info("Worker process %s released %d unstarted tasks", self.pid, len(released))

    def _title(self) -> None:
        with self.cond:
            running = list(self.running.values())
        state = "stopping" if self.stopping else "idle"
        if running:
            state = f"running {', '.join(running)}"
        titles.set_title(f"worker process {self.number} [{state}]")


def _timeout_error(error: TaskError, timeout: float) -> TaskError:
    """Record an interrupted task as TaskTimeout, keeping where it was stopped."""
    path = f"{TaskTimeout.__module__}.{TaskTimeout.__qualname__}"
    where = error.traceback.rsplit(_DEADLINE_PATH, 1)[0]
    return TaskError(
        exception_class_path=path,
        traceback=f"{where}{path}: the task ran past its timeout of {timeout:g} seconds\n",
    )


def resident_memory() -> int:
    """Return this process's resident set size in bytes (now, not its peak)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak is the best we have
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _forget_inherited_connections() -> None:
    """Give this child fresh connection handlers; never touch the arbiter's connections.

    Child side of the fork. Closing an inherited connection would end the session the arbiter
    still uses on the same socket, so the old handlers are kept alive, unused, until os._exit.
    """
    from asgiref.local import Local
    from django.db import connections
    from django.tasks import task_backends

    _inherited.extend([connections._connections, task_backends._connections])
    connections._connections = Local(connections.thread_critical)
    task_backends._connections = Local(task_backends.thread_critical)
