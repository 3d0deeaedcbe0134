"""The arbiter: forks the worker processes, watches them, and cleans up after the dead.

It never runs task code. Its signal handlers only queue the signal; one loop does the work:
wait, handle the queued signals, read the control pipes, reap dead workers (settling or
releasing what they held), kill stuck ones, spawn to the wanted number. Besides that loop, the
*broker thread* calls `backend.maintain(pool_id)` every `broker_interval`: that keeps the
heartbeats alive in the backend however long a task runs, since no task code runs here.

Each worker process leases under a pool id of its own (`<pool id>:<number>`), whose heartbeat
the broker thread keeps. Each also shares a scoreboard with the arbiter (`scoreboard.py`):
which tasks it started and has not published yet, with their deadlines, and a counter its main
thread moves (its heartbeat). No message per task crosses a pipe; the control pipe carries
only rare events (booted, boot error, retiring).

So a worker's death is cleaned up in seconds: what its scoreboard shows started fails with
WorkerLost (or TaskTimeout, or is retried per its policy), and then everything else its pool id
still holds, which it never started, is given back with `backend.release_pool`.

Signals: TERM/INT graceful stop (a second one: immediate), QUIT immediate, HUP reload the
workers, TTIN/TTOU one worker process more/less.
"""

import contextlib
import itertools
import logging
import os
import secrets
import select
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from django.tasks import TaskResultStatus
from django.tasks.exceptions import TaskResultDoesNotExist

from threadmill.backends.base import AcknowledgeableTaskBackend
from threadmill.backends.serialization import synthetic_error
from threadmill.exceptions import TaskTimeout, WorkerLost
from threadmill.pool import held_outcomes, titles
from threadmill.pool.config import (
    MAX_BOOT_FAILURES,
    TIMEOUT_GRACE,
    WORKER_BOOT_ERROR,
    PoolConfig,
)
from threadmill.pool.control import ControlReader
from threadmill.pool.process import WorkerProcess
from threadmill.pool.progress import DrainProgress
from threadmill.pool.scoreboard import STARTED, Scoreboard

logger = logging.getLogger("threadmill.arbiter")

HANDLED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGTTIN,
    signal.SIGTTOU,
    signal.SIGCHLD,
)


@dataclass(eq=False)
class Worker:
    """What the arbiter knows of one worker process."""

    pid: int
    number: int
    reader: ControlReader
    board: Scoreboard
    worker_id: str
    pool_id: str
    spawned_at: float
    last_seen: float
    progress: int = 0  # the scoreboard's counter when last read
    booted: bool = False
    boot_error: str | None = None
    long_ids: dict[int, str] = field(default_factory=dict)  # slot -> an id too long for it
    started: dict[str, float] = field(default_factory=dict)  # read at burial: id -> timeout
    held: dict[str, bytes] = field(default_factory=dict)  # read at burial: id -> its outcome
    retiring: bool = False  # leaving (recycled, reloaded, fewer processes): not counted
    stop_sent_at: float | None = None
    kill_reason: str | None = None
    timed_out_slot: int | None = None  # the slot of the task whose timeout got it killed
    timed_out: str | None = None  # that task, once the worker is reaped


@dataclass(eq=False)
class _Leftovers:
    """Tasks a dead worker held that could not be settled yet (the backend was unreachable)."""

    worker: Worker
    how: str
    task_ids: list[str]


class Arbiter:
    """Supervise the worker processes of one pool."""

    def __init__(self, config: PoolConfig, backend: AcknowledgeableTaskBackend) -> None:
        self.config = config
        self.backend = backend
        self.pid = os.getpid()
        self.hostname = socket.gethostname()
        self.pool_id = f"{self.hostname}:{self.pid}:{secrets.token_hex(4)}"
        self.target = config.processes
        self.workers: dict[int, Worker] = {}
        self.numbers = itertools.count(1)
        self.signals: deque[int] = deque()
        self.stopping = False
        self.stop_deadline: float | None = None
        self.exit_code = 0
        self.halt_reason: str | None = None
        self.boot_failures = 0
        self.last_boot_failure_at = 0.0
        self.spawn_not_before = 0.0
        self.next_empty_check = 0.0
        self.leftovers: list[_Leftovers] = []
        self.next_leftovers_try = 0.0
        self.progress = DrainProgress(sys.stderr) if config.exit_empty else None
        self._broker_stop = threading.Event()
        # The pool ids whose heartbeat the broker thread keeps. The lock is held across each
        # maintain() call, so a pool id dropped by the loop is never revived by the broker.
        self.pools_lock = threading.Lock()
        self.live_pools: set[str] = set()

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> int:
        """Run the pool until it is stopped; return the exit code."""
        self._install_signals()
        titles.set_title(f"arbiter [{self.config.backend_alias}, pool {self.pool_id}]")
        broker = threading.Thread(target=self._broker, name="broker", daemon=True)
        broker.start()
        logger.info(
            "Pool %s started: %d processes x %d threads, queues %s",
            self.pool_id,
            self.target,
            self.config.threads,
            ", ".join(self.config.queues),
        )
        try:
            while not (self.stopping and not self.workers):
                self._wait()
                self._handle_signals()
                self._read_control()
                self._reap()
                self._kill_overdue()
                self._settle_leftovers()
                if not self.stopping:
                    self._check_empty()
                if not self.stopping:
                    self._manage_workers()
        except BaseException:
            logger.exception("The arbiter failed; killing its worker processes")
            self.exit_code = 1
            self._stop_now("the arbiter failed")
            self._reap_all()
            raise
        finally:
            self._broker_stop.set()
            broker.join()
            self._settle_leftovers(force=True)
            for pool_id in list(self.live_pools):
                self._forget_pool(pool_id)
            if self.progress:
                self.progress.close()
        logger.info("Pool %s stopped", self.pool_id)
        return self.exit_code

    def _wait(self) -> None:
        """Sleep until a signal, a control message, or the next thing to check."""
        fds = [self.wake_r] + [w.reader.fd for w in self.workers.values() if not w.reader.closed]
        readable, _, _ = select.select(fds, [], [], self._next_check())
        if self.wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(self.wake_r, 4096)

    def _next_check(self) -> float:
        now = time.monotonic()
        # Heartbeats and graceful timeouts need no finer look than this. A task started since
        # the last turn shows up at the next one: its deadline is met at most a second late.
        soon = now + 1.0
        for worker in self.workers.values():
            for task in worker.board.started():
                if task.state == STARTED:
                    soon = min(soon, task.deadline + TIMEOUT_GRACE)
        if self.leftovers:
            soon = min(soon, self.next_leftovers_try)
        if len(self.workers) < self.target and not self.stopping:
            soon = min(soon, self.spawn_not_before)
        if self.config.exit_empty and not self.stopping:
            soon = min(soon, self.next_empty_check)
        return max(0.0, soon - now)

    # --- signals ----------------------------------------------------------------------------

    def _install_signals(self) -> None:
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, self._queue_signal)

    def _queue_signal(self, signum: int, frame: object) -> None:
        # No logging, no locks: just queue it (the wakeup fd wakes the loop).
        self.signals.append(signum)

    def _handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.popleft()
            if sig in (signal.SIGTERM, signal.SIGINT):
                if self.stopping:
                    self._stop_now(f"a second {signal.Signals(sig).name} came")
                else:
                    logger.info("%s: stopping gracefully", signal.Signals(sig).name)
                    self._stop_gracefully()
            elif sig == signal.SIGQUIT:
                self._stop_now("SIGQUIT came")
            elif sig == signal.SIGHUP and not self.stopping:
                logger.info("SIGHUP: replacing every worker process")
                for worker in list(self.workers.values()):
                    if not worker.retiring:
                        self._stop_worker(worker)
            elif sig == signal.SIGTTIN and not self.stopping:
                self.target += 1
                logger.info("SIGTTIN: %d worker processes", self.target)
            elif sig == signal.SIGTTOU and not self.stopping:
                self.target = max(1, self.target - 1)
                logger.info("SIGTTOU: %d worker processes", self.target)
            # SIGCHLD only wakes the loop: reaping happens on every turn.

    def _stop_gracefully(self) -> None:
        self.stopping = True
        self.stop_deadline = time.monotonic() + self.config.graceful_timeout
        for worker in self.workers.values():
            self._stop_worker(worker)

    def _stop_now(self, reason: str) -> None:
        logger.warning("Stopping at once: %s", reason)
        self.stopping = True
        for worker in self.workers.values():
            self._kill(worker, f"the pool stopped at once ({reason})")

    def _stop_worker(self, worker: Worker) -> None:
        """Ask a worker process to finish its running tasks and leave (SIGTERM)."""
        worker.retiring = True
        if worker.stop_sent_at is None:
            worker.stop_sent_at = time.monotonic()
            _signal(worker.pid, signal.SIGTERM)

    def _kill(self, worker: Worker, reason: str) -> None:
        if worker.kill_reason is None:
            worker.kill_reason = reason
            logger.warning("Killing worker process %s: %s", worker.pid, reason)
            _signal(worker.pid, signal.SIGKILL)

    # --- control pipes ----------------------------------------------------------------------

    def _read_control(self) -> None:
        for worker in self.workers.values():
            self._read(worker)

    def _read(self, worker: Worker) -> None:
        now = time.monotonic()
        progress = worker.board.progress()
        if progress != worker.progress:
            worker.progress = progress
            worker.last_seen = now
        for message in worker.reader.read():
            worker.last_seen = now
            if "long_id" in message:
                worker.long_ids[message["slot"]] = message["long_id"]
            elif "booted" in message:
                worker.booted = True
                self.boot_failures = 0
                logger.info("Worker process %s booted", worker.pid)
            elif "boot_error" in message:
                worker.boot_error = message["boot_error"]
            elif "retiring" in message:
                worker.retiring = True

    # --- reaping ----------------------------------------------------------------------------

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is not None:
                self._bury(worker, status)

    def _reap_all(self) -> None:
        while self.workers:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            worker = self.workers.pop(pid, None)
            if worker is not None:
                self._bury(worker, status)

    def _bury(self, worker: Worker, status: int) -> None:
        """Account for a worker process that is gone: what it held, why, what next."""
        self._read(worker)  # its last words are still in the pipe
        worker.reader.close()
        # Reaped: nothing writes the scoreboard any more, so this reading is the last word.
        for task in worker.board.started(final=True):
            task_id = task.task_id or worker.long_ids.get(task.slot)
            if task_id is not None:  # else it died before saying which: release_pool has it
                worker.started[task_id] = task.timeout
                if task.outcome is not None:
                    worker.held[task_id] = task.outcome
                if task.slot == worker.timed_out_slot:
                    worker.timed_out = task_id
        worker.board.close()
        how = describe_exit(status)
        if worker.kill_reason:
            how = f"{how} (by the arbiter: {worker.kill_reason})"
        expected = worker.stop_sent_at is not None or worker.kill_reason is not None
        if not worker.booted and not expected and not self.stopping:
            self._boot_failed(worker, how)
        elif os.waitstatus_to_exitcode(status) != 0 or worker.started:
            logger.error("Worker process %s %s", worker.pid, how)
        else:
            logger.info("Worker process %s exited", worker.pid)
        self.leftovers.append(_Leftovers(worker, how, sorted(worker.started)))
        self.next_leftovers_try = 0.0
        self._settle_leftovers()

    def _boot_failed(self, worker: Worker, how: str) -> None:
        reason = worker.boot_error or f"worker process {worker.pid} {how} before it booted"
        # Workers spawned together before the first failure fail together: count one round.
        if worker.spawned_at >= self.last_boot_failure_at:
            self.boot_failures += 1
        self.last_boot_failure_at = time.monotonic()
        if self.boot_failures >= MAX_BOOT_FAILURES:
            logger.error("Worker processes failed to boot %d times; stopping", self.boot_failures)
            self.halt_reason = reason
            self.exit_code = WORKER_BOOT_ERROR
            self._stop_gracefully()
            return
        delay = min(0.25 * 2 ** (self.boot_failures - 1), 10.0)
        self.spawn_not_before = time.monotonic() + delay
        logger.error(
            "Worker process %s failed to boot; trying again in %gs:\n%s",
            worker.pid,
            delay,
            reason.rstrip(),
        )

    def _settle_leftovers(self, force: bool = False) -> None:
        """Settle or release the tasks of dead workers; retried while the backend is down."""
        if not self.leftovers or (not force and time.monotonic() < self.next_leftovers_try):
            return
        pending, self.leftovers = self.leftovers, []
        for leftovers in pending:
            remaining = []
            for task_id in leftovers.task_ids:
                try:
                    self._settle_one(leftovers.worker, leftovers.how, task_id)
                except Exception:
                    logger.exception("Could not settle task %s; trying again", task_id)
                    remaining.append(task_id)
            # Only once what it started is settled: whatever else the worker still holds
            # never started. Give it back.
            if remaining or not self._release_pool(leftovers.worker.pool_id):
                self.leftovers.append(_Leftovers(leftovers.worker, leftovers.how, remaining))
        self.next_leftovers_try = time.monotonic() + 1.0

    def _release_pool(self, pool_id: str) -> bool:
        """Give back what a dead worker's pool id still holds; False to try again later."""
        with self.pools_lock:
            try:
                released = self.backend.release_pool(pool_id)
            except Exception:
                # Its heartbeat goes on meanwhile, so nothing it holds is failed for waiting.
                logger.exception("Could not release the tasks of %s; trying again", pool_id)
                return False
            self.live_pools.discard(pool_id)
        if released:
            logger.info("Released %d unstarted tasks of %s", released, pool_id)
        return True

    def _forget_pool(self, pool_id: str) -> None:
        with self.pools_lock:
            self.live_pools.discard(pool_id)
            try:
                self.backend.forget_pool(pool_id)
            except Exception:
                logger.exception("Could not drop the heartbeat of %s", pool_id)

    def _settle_one(self, worker: Worker, how: str, task_id: str) -> None:
        try:
            result = self.backend.get_result(task_id)
        except TaskResultDoesNotExist:
            return
        if (
            result.status != TaskResultStatus.RUNNING
            or not result.worker_ids
            or result.worker_ids[-1] != worker.worker_id
        ):
            return  # already settled, or leased again by someone else: not ours to touch
        held = worker.held.get(task_id)
        if held is not None:
            # It finished; the worker died holding its outcome unpublished. Publish it.
            try:
                finished, retry_in = held_outcomes.decode(result, held)
            except ValueError:
                logger.exception("Task %s: its held outcome cannot be read", task_id)
            else:
                status = held_outcomes.publish(self.backend, finished, retry_in)
                logger.info(
                    "Task %s %s %s (published for worker process %s, which %s)",
                    task_id,
                    result.task.module_path,
                    status or "not published: its lease had ended",
                    worker.pid,
                    how,
                )
                return
        timeout = worker.started.get(task_id)
        if task_id == worker.timed_out:
            error = synthetic_error(
                TaskTimeout,
                f"the task ran past its timeout of {timeout:g} seconds and did not stop; "
                f"worker process {worker.pid} {how}",
            )
        elif timeout is not None and worker.timed_out_slot is None:
            error = synthetic_error(
                WorkerLost, f"worker process {worker.pid} {how} while running the task"
            )
        else:
            # An innocent bystander of another task's timeout kill.
            self.backend.release(result)
            logger.info("Released task %s of worker process %s", task_id, worker.pid)
            return
        self.backend.settle(result, error)
        logger.error(
            "Task %s %s ended: %s", task_id, result.task.module_path, error.traceback.strip()
        )

    # --- supervision ------------------------------------------------------------------------

    def _kill_overdue(self) -> None:
        now = time.monotonic()
        for worker in self.workers.values():
            if worker.kill_reason:
                continue
            overdue = [
                task
                for task in worker.board.started()
                if task.state == STARTED and now > task.deadline + TIMEOUT_GRACE
            ]
            if overdue:
                task = overdue[0]
                worker.timed_out_slot = task.slot
                self._kill(
                    worker,
                    f"task {task.task_id or worker.long_ids.get(task.slot)} ran past its "
                    f"timeout of {task.timeout:g}s and did not stop",
                )
            elif now - worker.last_seen > self.config.heartbeat_timeout:
                self._kill(
                    worker,
                    f"it sent no heartbeat for {now - worker.last_seen:.0f} seconds "
                    "(stuck, holding the GIL?)",
                )
            elif (
                worker.stop_sent_at is not None
                and now > worker.stop_sent_at + self.config.graceful_timeout
            ):
                self._kill(worker, "it did not stop within --graceful-timeout")
        if self.stop_deadline is not None and now > self.stop_deadline:
            for worker in self.workers.values():
                self._kill(worker, "--graceful-timeout passed")

    def _manage_workers(self) -> None:
        active = sorted(
            (w for w in self.workers.values() if not w.retiring), key=lambda w: w.spawned_at
        )
        for worker in active[: max(0, len(active) - self.target)]:
            self._stop_worker(worker)
        missing = self.target - len(active)
        if missing <= 0 or time.monotonic() < self.spawn_not_before:
            return
        if self.boot_failures:
            # After a boot failure, probe with one process at a time.
            if any(not w.booted for w in self.workers.values()):
                return
            missing = 1
        for _ in range(missing):
            self._spawn()

    def _spawn(self) -> None:
        number = next(self.numbers)
        pool_id = f"{self.pool_id}:{number}"
        # The heartbeat exists before the first lease is tied to it.
        with self.pools_lock:
            try:
                self.backend.maintain(pool_id)
            except Exception:
                logger.exception("Cannot reach the backend; spawning again in 1s")
                self.spawn_not_before = time.monotonic() + 1.0
                return
            self.live_pools.add(pool_id)
        read_fd, write_fd = os.pipe()
        # Created before the fork, so both sides share it.
        board = Scoreboard(self.config.scoreboard_slots)
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # or the child would print our buffered output a second time
        # Signals stay blocked across the fork until the child has its own handlers, so a
        # SIGTERM sent to a newborn worker is not swallowed by a copy of our queue.
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
            board.close()
            raise
        if pid == 0:
            # Child side of the fork: never return into the arbiter's loop.
            try:
                signal.set_wakeup_fd(-1)
                for fd in (read_fd, self.wake_r, self.wake_w):
                    os.close(fd)
                for other in self.workers.values():
                    if not other.reader.closed:
                        os.close(other.reader.fd)
                    other.board.close()
                WorkerProcess(self.config, pool_id, write_fd, board, self.pid, number).run()
            finally:
                os._exit(WORKER_BOOT_ERROR)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        os.close(write_fd)
        now = time.monotonic()
        self.workers[pid] = Worker(
            pid=pid,
            number=number,
            reader=ControlReader(read_fd),
            board=board,
            worker_id=f"{self.hostname}:{pid}:fetcher",
            pool_id=pool_id,
            spawned_at=now,
            last_seen=now,
        )
        logger.info("Spawned worker process %s", pid)

    def _check_empty(self) -> None:
        if not self.config.exit_empty or time.monotonic() < self.next_empty_check:
            return
        self.next_empty_check = time.monotonic() + min(self.backend.broker_interval, 1.0)
        try:
            counts = self.backend.count_pending(*self.config.queues)
        except Exception:
            logger.exception("Could not count the pending tasks")
            return
        left = counts["ready"] + counts["running"]
        if self.progress:
            self.progress.update(left)
        if left == 0:
            logger.info("--exit-empty: no task is ready or running; stopping")
            self._stop_gracefully()

    def _broker(self) -> None:
        # Runs beside the loop, so that a slow backend call never delays reaping a worker.
        while not self._broker_stop.wait(self.backend.broker_interval):
            try:
                # One pass keeps every worker's heartbeat; under the lock, so a pool id the
                # loop has just forgotten is not revived.
                with self.pools_lock:
                    self.backend.maintain(*sorted(self.live_pools))
            except Exception:
                logger.exception("Maintenance of pool %s failed", self.pool_id)


def describe_exit(status: int) -> str:
    """Say how a process ended, from its wait status: a signal's name or an exit code."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"was killed by {name}"
    return f"exited with code {os.waitstatus_to_exitcode(status)}"


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # already dead: the reaper will see it
        os.kill(pid, sig)
