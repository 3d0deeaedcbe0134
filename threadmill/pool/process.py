"""A worker process: `threads + 1` pool threads lease tasks and run them, one publisher.

Everything here runs in a child the arbiter forked, and `run()` never returns: it ends with
`os._exit`, so the arbiter's stack (its loop, its `finally` blocks) never unwinds in a child.

Threads and what they own:
- the *pool threads* (`threads + 1` of them, so one can lease while all the others run
  tasks) share two jobs. At most one at a time *leases*: up to `threads + prefetch` tasks in
  one backend call, into `buffer`. At most `threads` at a time *run* a task: take it from
  `buffer`, mark it started on the scoreboard (shared with the arbiter, see `scoreboard.py`)
  before calling its code, run it (`threadmill.execution`), ask its retry policy when it
  failed, write the outcome into the task's scoreboard slot (`held_outcomes.py`), put it in
  the `outbox` and go on at once. The thread whose lease brings tasks back runs the first one
  itself when a place is free, and wakes another thread to take over leasing: so an idle pool
  starts a task in the very thread that received it, and no thread hand-off (a wake-up of a
  sleeping thread, ~0.3 ms here) stands between a task's arrival and its start;
- the *publisher* sends the whole outbox in one round trip (`acknowledge_many`; retries one
  by one) once PUBLISH_BATCH outcomes wait, or the oldest has waited HOLD_AGE, or the buffer
  is empty (the pool threads are about to idle: no reason to wait). So an idle pool publishes
  each outcome at once, and a stream of short tasks publishes them many to a round trip
  while its threads keep running tasks. Outcomes are held through a backend outage and
  only then are their scoreboard slots freed. At most HOLD_LIMIT outcomes are held; past
  that, and for an outcome too big for its slot, the thread that ran the task waits until
  its outcome is published;
- the *main thread* waits for signals, moves the heartbeat counter on the scoreboard, writes
  out buffered log lines, updates the process title, and raises `_Deadline` in a thread
  whose task ran past its timeout. It runs no task code, so the heartbeat stops only when the
  whole process stops making progress (stuck in C, holding the GIL).

No thread writes to the arbiter's pipe per task: a task costs the shared memory writes of its
scoreboard slot, and its outcome shares one round trip with whatever else finished meanwhile.
A thread runs no more task code until its outcome is published or held in shared memory, so
a task that crashes the process cannot take the finished tasks down with it: the arbiter
publishes what was held.

Stop order (SIGTERM, recycling, the arbiter gone): stop leasing first and wait for the lease
call in flight, because a lease taken after we looked would otherwise be lost; threads take
no new task; running tasks finish and their outcomes are published; then what was never
started is released, and the process exits.
"""

import contextlib
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
from datetime import timedelta
from typing import NoReturn

from django.tasks import TaskResult, TaskResultStatus
from django.tasks.base import TaskError
from django.utils import timezone

from threadmill.backends.base import AcknowledgeableTaskBackend, retry_delay
from threadmill.exceptions import TaskTimeout
from threadmill.execution import execute
from threadmill.outcomes import failed
from threadmill.pool import held_outcomes, logs, titles
from threadmill.pool.config import (
    FETCH_TIMEOUT,
    HOLD_AGE,
    HOLD_LIMIT,
    INTERRUPT_REPEAT,
    PUBLISH_BATCH,
    TICK_INTERVAL,
    TIMEOUT_GRACE,
    WORKER_BOOT_ERROR,
    PoolConfig,
)
from threadmill.pool.control import ControlWriter
from threadmill.pool.scoreboard import Scoreboard
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


@dataclass(slots=True)
class _Outcome:
    """A finished task on its way to the backend."""

    finished: TaskResult
    slot: int  # its scoreboard slot, freed once the outcome is published
    duration: float  # seconds its code ran
    retry_in: timedelta | None  # its retry policy's answer, asked once by the thread that ran it
    known_errors: int  # errors the task had when it was leased (the rest are this attempt's)
    ended: float  # time.monotonic() when its code returned
    held: bool = False  # in the scoreboard; else its thread waits until it is published
    published: bool = False


class WorkerProcess:
    """One forked worker process of a pool."""

    def __init__(
        self,
        config: PoolConfig,
        pool_id: str,
        control_fd: int,
        board: Scoreboard,
        arbiter_pid: int,
        number: int,
    ) -> None:
        self.config = config
        self.pool_id = pool_id
        self.control = ControlWriter(control_fd)
        self.board = board
        self.arbiter_pid = arbiter_pid
        self.number = number
        self.pid = os.getpid()
        self.worker_id = f"{socket.gethostname()}:{self.pid}:fetcher"
        self.backend: AcknowledgeableTaskBackend

        # `lock` guards everything below it. One condition per kind of waiter, so that a change
        # wakes only the thread that waits for it (a wake-up is a system call or two).
        self.lock = threading.Lock()
        self.work_ready = threading.Condition(self.lock)  # idle pool threads: see `_work`
        self.published = threading.Condition(self.lock)  # threads waiting for their outcome
        self.outbox_ready = threading.Condition(self.lock)  # the publisher: outbox, threads gone
        self.buffer: deque[TaskResult] = deque()
        self.outbox: list[_Outcome] = []  # outcomes waiting for the next publication
        self.unpublished = 0  # outcomes in the outbox or being published
        self.waiting = 0  # outcomes in the outbox not held: their threads wait
        self.threads_left = config.threads + 1  # pool threads still alive
        self.executing = 0  # pool threads running a task (at most `config.threads`)
        self.leasing = False  # a pool thread is in a lease call
        self.lease_pause = 0.0  # seconds to wait before leasing again after a failure
        self.in_hand = 0  # leased and not finished yet (nor released): buffered or running
        self.limit = config.threads + config.prefetch
        # A slot for each running task and each unpublished outcome (see `_commit`).
        self.free_slots = list(range(config.scoreboard_slots))
        budget = math.inf
        if config.max_tasks is not None:
            budget = config.max_tasks + random.randint(0, config.max_tasks_jitter)
        self.budget: float = budget  # leases this process may still take
        self.stopping = False
        self.stop_requested = threading.Event()
        self.running: dict[int, str] = {}  # thread ident -> task path, for the process title

        # `clock_lock` guards `clocks`; the main thread fires a clock only while holding it.
        self.clock_lock = threading.Lock()
        self.clocks: dict[int, _Clock] = {}

        self.signals: deque[int] = deque()
        self.threads: list[threading.Thread] = []
        self.title = ""

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
            logging.shutdown()  # writes out the buffered log lines
            os._exit(code)

    def _boot(self) -> None:
        # Child side of the fork: take the signals back from the arbiter's handlers.
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        self.wake_fd, self.wake_w = wake_r, wake_w
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
        # One write per tick instead of one per task end; warnings still go out at once.
        logs.buffer_stream_handlers()

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

        self.threads.append(threading.Thread(target=self._publisher, name="publisher", daemon=True))
        # One thread more than may run tasks at once: one can lease while all the others run.
        for index in range(self.config.threads + 1):
            self.threads.append(
                threading.Thread(target=self._work, name=f"pool-thread-{index}", daemon=True)
            )
        for thread in self.threads:
            thread.start()
        self.control.send(booted=True)

    def _queue_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)  # nothing else: the main loop acts on it

    def _serve(self) -> int:
        while any(thread.is_alive() for thread in self.threads):
            self.board.tick()
            logs.flush_buffered()
            self._title()
            wait = self._fire_clocks() - time.monotonic()
            ready, _, _ = select.select([self.wake_fd], [], [], max(0.0, min(wait, TICK_INTERVAL)))
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
        with self.lock:
            if self.stopping:
                return
            self.stopping = True
            self.work_ready.notify_all()
            self.outbox_ready.notify()  # publish what is held now
        self.stop_requested.set()
        logger.info("Worker process %s stops because %s", self.pid, reason)
        # From a thread of its own: during an outage the call retries for seconds, and the
        # main thread must go on ticking meanwhile, or the arbiter takes it for stuck.
        threading.Thread(target=self._interrupt_lease, name="interrupt", daemon=True).start()
        if retiring:
            self.control.send(retiring=True)

    def _interrupt_lease(self) -> None:
        """Interrupt the wait for work of the lease call in flight, if any, and again every
        INTERRUPT_REPEAT seconds until it has returned.

        Once is not always enough: a wait whose reply is lost on a failing link may have
        taken the interrupt with it, and the call, resent as a lease alone, cannot tell and
        waits for work again. (No new lease call starts once `stopping` is set.)
        """
        warned = False
        while True:
            with self.lock:
                if not self.leasing:
                    return
            try:
                self.backend.interrupt(self.worker_id)
            except Exception:
                if not warned:  # an outage: the call in flight waits for it to end as well
                    logger.warning("Could not interrupt the lease call's wait", exc_info=True)
                    warned = True
            time.sleep(INTERRUPT_REPEAT)

    # --- pool threads -----------------------------------------------------------------------

    def _work(self) -> None:
        """A pool thread: runs a buffered task, or leases more when that is wanted and no other
        thread is leasing, or waits until one of the two is there to do."""
        from django.db import close_old_connections, connections

        ident = threading.get_ident()
        ran = False
        try:
            while True:
                with self.lock:
                    if ran:
                        self.executing -= 1
                        ran = False
                    waited = stopped = False
                    while True:
                        if self.stopping:
                            stopped = True
                            break
                        if self._can_run():
                            leased, slot = self._take(ident)
                            break
                        if self._may_lease():
                            self.leasing = True
                            leased = None
                            break
                        if self._nothing_more():
                            return
                        waited = True
                        self.work_ready.wait()
                if stopped:
                    # No thread takes a buffered task any more: give them back now, not once
                    # the longest running task ends (a lease that met the stop's interrupt may
                    # have filled the buffer).
                    self._release_buffer()
                    return
                if leased is None:
                    taken = self._lease(ident)
                    if taken is None:
                        continue
                    leased, slot = taken
                    waited = True  # a lease may have waited for work a long while
                ran = True  # counted in `executing` since `_take`, whatever happens next
                if waited:
                    # Idle, this thread's connections may have passed CONN_MAX_AGE (after a
                    # task, `execute` closes what it left); between busy tasks there is no need.
                    close_old_connections()
                self._commit(self._run(leased, slot, ident))
                self._check_memory()
        finally:
            with self.lock:
                if ran:
                    self.executing -= 1
                self.threads_left -= 1
                self.outbox_ready.notify()  # the publisher sends what is left, then ends
                self.work_ready.notify()  # what this thread would have done, another does
            connections.close_all()  # this thread's own connections
            self._wake_main()

    def _can_run(self) -> bool:
        """Is a buffered task waiting for a free place? (With `lock` held.)"""
        return bool(self.buffer) and self.executing < self.config.threads

    def _may_lease(self) -> bool:
        """Should a thread lease now? (With `lock` held.)"""
        return not self.leasing and self.budget > 0 and self._wants_more()

    def _nothing_more(self) -> bool:
        """--max-tasks leased and every task taken: no work will come. (With `lock` held.)"""
        return self.budget <= 0 and not self.leasing and not self.buffer

    def _wants_more(self) -> bool:
        # Refill in batches: wait until half the prefetch is used up (or a thread is idle), so
        # one round trip leases many tasks instead of one round trip per finished task.
        if self.in_hand >= self.limit:
            return False
        return len(self.buffer) <= self.config.prefetch // 2 or self.in_hand < self.config.threads

    def _take(self, ident: int) -> tuple[TaskResult, int]:
        """Take the next buffered task to run in this thread. (With `lock` held.)"""
        leased = self.buffer.popleft()
        slot = self.free_slots.pop()  # one is free: see `PoolConfig.scoreboard_slots`
        self.executing += 1
        self.running[ident] = leased.task.module_path
        if not self.buffer and self.outbox:
            self.outbox_ready.notify()  # nothing more to run: publish now
        self._pass_on()
        return leased, slot

    def _pass_on(self) -> None:
        """After this thread took a task or ended a lease, or before it waits for its outcome:
        wake one waiting thread if there is a task for it to run or a lease to make (so the
        prefetch is topped up as the buffer shrinks, not only when a task ends: a long task
        would otherwise starve it), or all of them once nothing more will come. (With `lock`
        held.)"""
        if self._nothing_more():
            self.work_ready.notify_all()  # idle threads end
        elif self._can_run() or self._may_lease():
            self.work_ready.notify()

    def _lease(self, ident: int) -> tuple[TaskResult, int] | None:
        """Lease what is wanted, as the one thread leasing now; return a task for this thread
        to run, or None.

        The thread whose lease brings tasks back runs the first itself when a thread's place
        is free, and another thread takes over leasing: an idle pool starts a task in the
        thread that received it, without waking another first (~0.3 ms here).
        """
        with self.lock:
            count = int(min(self.limit - self.in_hand, self.budget))
        leased: list[TaskResult] = []
        try:
            leased = self.backend.acquire_many(
                *self.config.queues,
                count=count,
                timeout=FETCH_TIMEOUT,
                worker_id=self.worker_id,
                pool_id=self.pool_id,
            )
        except Exception:
            self.lease_pause = min(5.0, self.lease_pause * 2 or 0.1)
            logger.exception("Leasing tasks failed; trying again in %.1fs", self.lease_pause)
            self.stop_requested.wait(self.lease_pause)
        else:
            self.lease_pause = 0.0
        finally:
            # The arbiter need not hear of these: if we die before one is marked started on
            # the scoreboard, `release_pool` gives it back with the rest of our leases.
            with self.lock:
                self.leasing = False
                self.buffer.extend(leased)
                self.in_hand += len(leased)
                self.budget -= len(leased)
                # Only a lease takes from the budget, and only while some is left: this is the
                # one lease that used it up.
                exhausted = self.budget <= 0 and not self.stopping
                taken = None
                if self._can_run() and not self.stopping:
                    taken = self._take(ident)
                else:
                    self._pass_on()
        if exhausted:
            logger.info("Worker process %s leased its --max-tasks; retiring", self.pid)
            self.control.send(retiring=True)
            self._wake_main()
        return taken

    def _run(self, leased: TaskResult, slot: int, ident: int) -> _Outcome:
        timeout = self._timeout_of(leased)
        started = time.monotonic()
        # Before the task's code runs: if the process dies from here on, the arbiter settles
        # this task as started (WorkerLost, TaskTimeout) instead of releasing it.
        if not self.board.start(slot, leased.id, timeout, started + timeout):
            self.control.send(long_id=leased.id, slot=slot)
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
        duration = time.monotonic() - started
        # Its deadline no longer counts, however long publishing takes (a backend outage).
        self.board.finish(slot)
        if finished.errors and finished.errors[-1].exception_class_path == _DEADLINE_PATH:
            finished.errors[-1] = _timeout_error(finished.errors[-1], timeout)
        retry_in = None
        if finished.status == TaskResultStatus.FAILED:
            retry_in = retry_delay(finished)  # here, once: a policy with side effects runs once
        with self.lock:
            del self.running[ident]
        return _Outcome(finished, slot, duration, retry_in, len(leased.errors), started + duration)

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

    # --- publishing -----------------------------------------------------------------------

    def _commit(self, outcome: _Outcome) -> None:
        """Hand a finished task's outcome to the publisher; return at once if it could be held
        in the scoreboard, else once it is published."""
        encoded = None
        if self.unpublished < HOLD_LIMIT:  # a glance without the lock, to skip a useless encode
            encoded = held_outcomes.encode(outcome.finished, outcome.retry_in, outcome.known_errors)
        with self.lock:
            outcome.held = (
                encoded is not None
                and self.unpublished < HOLD_LIMIT
                and self.board.hold(outcome.slot, encoded)
            )
            self.in_hand -= 1
            self.unpublished += 1
            self.waiting += not outcome.held
            self.outbox.append(outcome)
            # Wake the publisher when it has a clock to start or a batch to send, not for
            # every outcome (a wake-up is a system call).
            if len(self.outbox) == 1 or self._publication_due():
                self.outbox_ready.notify()
            if not outcome.held:
                self._pass_on()  # this thread waits: another may lease or run meanwhile
            while not outcome.held and not outcome.published:
                self.published.wait()

    def _publication_due(self) -> bool:
        """Send the outbox now, or let it grow? (With `lock` held and the outbox not empty.)"""
        return (
            len(self.outbox) >= PUBLISH_BATCH
            or self.waiting > 0  # a thread waits for its outcome
            or not self.buffer  # the threads are about to idle
            or self.stopping
            or not self.threads_left
        )

    def _publisher(self) -> None:
        """The publisher thread: publish the outbox, batch after batch, until the pool threads
        are gone and nothing is left."""
        try:
            while self._publish_next():
                pass
        except BaseException:
            # Never expected (`_publish` outlasts backend outages). Going on without a
            # publisher would leave the pool threads waiting for ever: die instead, and the
            # arbiter publishes the held outcomes and settles the rest.
            logger.critical("The publisher of worker process %s failed; exiting", self.pid,
                            exc_info=True)  # fmt: skip
            logging.shutdown()
            os._exit(1)
        self._wake_main()

    def _publish_next(self) -> bool:
        """Wait for the next batch and publish it; False once nothing is left to publish."""
        with self.lock:
            while True:
                if not self.outbox:
                    if not self.threads_left:
                        return False
                    self.outbox_ready.wait()
                    continue
                wait = self.outbox[0].ended + HOLD_AGE - time.monotonic()
                if wait <= 0 or self._publication_due():
                    break
                self.outbox_ready.wait(wait)
            batch, self.outbox = self.outbox, []
            self.waiting -= sum(not item.held for item in batch)
        statuses = self._publish(batch)
        # Published: only now may the arbiter forget these tasks, and only then may their
        # slots be handed out again (a slot is freed before it goes back to the list).
        for item in batch:
            self.board.free(item.slot)
        with self.lock:
            for item in batch:
                item.published = True
            self.free_slots.extend(item.slot for item in batch)
            self.unpublished -= len(batch)
            self.published.notify_all()
        for item, status in zip(batch, statuses, strict=True):
            self._log_end(item, status)
        return True

    def _publish(self, batch: list[_Outcome]) -> list[str]:
        """Acknowledge finished tasks in one round trip, schedule retries; return what to log.

        While the backend is unreachable the outcomes are held and sent again with backoff,
        for as long as it takes: a result is never dropped. (The backend's own client already
        retries a few times; this outlasts a longer outage, such as a Redis restart.) Sending
        an acknowledgement again is safe: the holder's repeated call is accepted.
        """
        statuses: list[str | None] = [None] * len(batch)
        for attempt in itertools.count():
            try:
                acknowledged = [i for i, o in enumerate(batch) if o.retry_in is None]
                if acknowledged and statuses[acknowledged[0]] is None:
                    if len(acknowledged) == 1:
                        # One alone goes as a single call: a batch may cost the backend more
                        # (redis-py checks its scripts before each pipeline, a round trip).
                        self.backend.acknowledge(batch[acknowledged[0]].finished)
                    else:
                        self.backend.acknowledge_many([batch[i].finished for i in acknowledged])
                    for i in acknowledged:
                        statuses[i] = str(batch[i].finished.status)
                for i, outcome in enumerate(batch):
                    if statuses[i] is None and outcome.retry_in is not None:
                        self.backend.retry(outcome.finished, timezone.now() + outcome.retry_in)
                        statuses[i] = f"FAILED, retry in {outcome.retry_in.total_seconds():g}s"
                return [status or "" for status in statuses]
            except Exception:
                pause = backoff_delay(attempt + 1, 0.1, 2.0, 5.0)
                what = f"the outcome of task {batch[0].finished.id}"
                if len(batch) > 1:
                    what = f"a batch of {len(batch)} outcomes (task {batch[0].finished.id}, ...)"
                logger.warning(
                    "Publishing %s failed; holding it, next try in %gs",
                    what,
                    pause,
                    exc_info=attempt == 0,
                )
                time.sleep(pause)
        raise AssertionError("unreachable")

    def _log_end(self, outcome: _Outcome, status: str) -> None:
        finished = outcome.finished
        logger.info(
            "Task %s %s %s in %.3fs",
            finished.id,
            finished.task.module_path,
            status,
            outcome.duration,
            extra={
                "task_id": finished.id,
                "task_path": finished.task.module_path,
                "status": status,
                "duration": round(outcome.duration, 6),
                "attempt": len(finished.worker_ids),
            },
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
                    # Under clock_lock, so the thread cannot have left the task's clock yet:
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

    def _wake_main(self) -> None:
        """Make the main thread look now (a thread ended), not at its next tick."""
        with contextlib.suppress(BlockingIOError):  # full: it wakes anyway
            os.write(self.wake_w, b"t")

    def _release_buffer(self) -> None:
        with self.lock:
            unstarted = list(self.buffer)
            self.buffer.clear()
        released = 0
        for result in unstarted:
            try:
                self.backend.release(result)
                released += 1
            except Exception:
                # Still leased under our pool id: the arbiter releases it when we are gone.
                logger.exception("Could not release task %s", result.id)
        if released:
            logger.info("Worker process %s released %d unstarted tasks", self.pid, released)

    def _title(self) -> None:
        """Show what runs now in `ps`; called on every tick, it changes the title only then."""
        with self.lock:
            running = list(self.running.values())
            stopping = self.stopping
        state = "stopping" if stopping else "idle"
        if running:
            state = f"running {', '.join(running)}"
        title = f"worker process {self.number} [{state}]"
        if title != self.title:
            self.title = title
            titles.set_title(title)


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
