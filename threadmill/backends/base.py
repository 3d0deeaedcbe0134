"""The queue contract the pool runs on: lease a task, publish its result, give it back.

A task moves READY (or scheduled) -> RUNNING (leased) -> SUCCESSFUL | FAILED. The lease is the
only owner token: whoever holds the lease of attempt N may acknowledge, retry or release that
attempt, and nobody else. A lease ends when it is acknowledged, retried or released, when it
expires (`lease_ttl`), or when the heartbeat of the pool that took it stops (`pool_ttl`); an
ended lease's late holder is refused and told so, and the recorded outcome stands.

Delivery is at least once: a task whose lease ended without a result runs again only if its
retry policy says so, otherwise it fails with `AcknowledgementTimeout` or `WorkerLost`.
"""

import logging
from abc import abstractmethod
from collections.abc import Iterator, Mapping
from datetime import datetime, timedelta
from typing import Any

from django.core import checks
from django.tasks import TaskContext, TaskResult
from django.tasks.backends.base import BaseTaskBackend
from django.tasks.base import TaskError
from django.utils import timezone

from threadmill import outcomes
from threadmill.backends.serialization import error_from_exception
from threadmill.tasks import Task

logger = logging.getLogger("threadmill.backends")


# The longest duration an option takes: longer ones are surely mistakes, and the stores cannot
# all represent "for ever" (Redis refuses an expiry past 2^63 milliseconds).
LONGEST_DURATION = 100 * 365 * 86400


def seconds(value: Any, name: str) -> float:
    """Read a duration option given as seconds or a timedelta; raise ValueError naming it."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of seconds or a timedelta, not {value!r}.")
    if not value > 0:  # also refuses NaN
        raise ValueError(f"{name} must be positive, not {value!r}.")
    if value > LONGEST_DURATION:
        raise ValueError(f"{name} must be at most 100 years ({LONGEST_DURATION} s), not {value!r}.")
    return float(value)


# Option name -> (default, kind). A duration is seconds; a count is a positive int.
COMMON_OPTIONS: dict[str, tuple[Any, str]] = {
    "lease_ttl": (3600.0, "duration"),
    "result_ttl": (86400.0, "duration"),
    "broker_interval": (1.0, "duration"),
    "pool_ttl": (60.0, "duration"),
    "batch_size": (100, "count"),
}


def parse_options(
    options: Mapping[str, Any], known: Mapping[str, tuple[Any, str]]
) -> tuple[dict[str, Any], list[str]]:
    """Return the options with defaults filled in, and a list of problems (empty when valid)."""
    parsed: dict[str, Any] = {}
    problems = [
        f"unknown option {name!r} (known: {', '.join(sorted(known))})"
        for name in options
        if name not in known
    ]
    for name, (default, kind) in known.items():
        value = options.get(name, default)
        try:
            if kind == "duration":
                parsed[name] = seconds(value, name)
            elif kind == "count":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"{name} must be a whole number of at least 1, not {value!r}.")
                parsed[name] = value
            else:
                parsed[name] = value
        except ValueError as error:
            problems.append(str(error))
            parsed[name] = default
    return parsed, problems


class AcknowledgeableTaskBackend(BaseTaskBackend):
    """A task backend whose tasks a pool can lease, run and acknowledge."""

    task_class = Task
    supports_defer = True
    supports_async_task = True
    supports_get_result = True
    supports_priority = True

    # Options every acknowledgeable backend understands; subclasses extend the mapping.
    known_options: Mapping[str, tuple[Any, str]] = COMMON_OPTIONS

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.settings, self.option_problems = parse_options(self.options, self.known_options)
        self.lease_ttl: float = self.settings["lease_ttl"]
        self.result_ttl: float = self.settings["result_ttl"]
        self.broker_interval: float = self.settings["broker_interval"]
        self.pool_ttl: float = self.settings["pool_ttl"]
        self.batch_size: int = self.settings["batch_size"]

    # --- the contract -------------------------------------------------------------------

    @abstractmethod
    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        """Queue up a task to be executed; atomic, and raises rather than dropping it."""

    @abstractmethod
    def get_result(self, result_id: str) -> TaskResult:
        """Return the task result in any state, or raise TaskResultDoesNotExist."""

    def acquire(
        self,
        *queue_names: str,
        timeout: float | None = None,
        worker_id: str | None = None,
        pool_id: str | None = None,
    ) -> TaskResult:
        """Lease the next task; raise TimeoutError when none arrives within `timeout` seconds.

        `timeout=None` waits for ever; 0 does not wait.
        """
        while True:
            leased = self.acquire_many(
                *queue_names, count=1, timeout=timeout, worker_id=worker_id, pool_id=pool_id
            )
            if leased:
                return leased[0]
            if timeout is not None:
                raise TimeoutError(f"No task arrived in {timeout} seconds.")

    @abstractmethod
    def acquire_many(
        self,
        *queue_names: str,
        count: int,
        timeout: float | None = None,
        worker_id: str | None = None,
        pool_id: str | None = None,
    ) -> list[TaskResult]:
        """Lease up to `count` tasks in one round trip, fairly across `queue_names`.

        Highest priority first, then oldest; scheduled tasks only once due. Each leased task is
        RUNNING with `worker_id` appended to its worker_ids. Waits up to `timeout` seconds for
        the first task (server-side, not polling); returns an empty list when none came.
        `pool_id` ties the leases to that pool's heartbeat.
        """

    def interrupt(self, worker_id: str) -> None:
        """Make a blocked `acquire_many` of `worker_id` return now (empty), e.g. to stop.

        An interrupt sent while that worker is not waiting ends its next wait at once.
        Backends whose waits are short anyway need not do anything.
        """

    @abstractmethod
    def acknowledge(self, task_result: TaskResult, *, by_holder: bool = True) -> bool:
        """Publish the final result of a leased task and end its lease, atomically.

        Returns False (and logs) when the lease has ended; the outcome recorded by whoever
        settled it stands. A holder's repeated call (its first reply was lost) returns True.
        `by_holder=False` is for whoever ends a lease on the holder's behalf (maintenance,
        the arbiter): the holder's own late call is then refused.
        """

    def acknowledge_many(self, task_results: list[TaskResult]) -> list[bool]:
        """Acknowledge several leased tasks; backends that can do it in one round trip do."""
        return [self.acknowledge(task_result) for task_result in task_results]

    @abstractmethod
    def release(self, task_result: TaskResult) -> bool:
        """Give a leased, unstarted task back to its queue as it was (no attempt counted)."""

    @abstractmethod
    def retry(self, task_result: TaskResult, run_after: datetime) -> bool:
        """Record the failed attempt (`task_result.errors[-1]`) and schedule the task again."""

    @abstractmethod
    def maintain(self, *pool_ids: str | None) -> dict[str, int]:
        """Run one maintenance pass; safe to run from many pools at once.

        Keeps the heartbeat of each of `pool_ids` alive (and renews their leases, so tasks
        waiting in a live pool are never failed for waiting), moves due scheduled tasks to
        their queues, settles orphaned leases (expired, or whose pool's heartbeat stopped) and
        trims expired results (where the store does not expire them itself). Returns counts of
        what it did.
        """

    @abstractmethod
    def release_pool(self, pool_id: str) -> int:
        """Release every task `pool_id` still holds and drop the pool; return how many.

        Only for a caller that knows none of them started: the arbiter, once it has settled
        what a dead worker process had started, gives back what the worker leased unseen.
        """

    @abstractmethod
    def forget_pool(self, pool_id: str) -> None:
        """Declare a pool gone now: the next maintenance pass settles what it still holds."""

    @abstractmethod
    def count_pending(self, *queue_names: str) -> dict[str, int]:
        """Count tasks `ready`, `scheduled` and `running` in the queues (for --exit-empty)."""

    # --- built on the contract ----------------------------------------------------------

    def settle(self, task_result: TaskResult, error: TaskError, *, by_holder: bool = False) -> bool:
        """End a leased task that failed with `error`: retry it per its policy, else fail it."""
        failed = outcomes.failed(task_result, error)
        delay = retry_delay(failed)
        if delay is not None:
            return self.retry(failed, timezone.now() + delay)
        return self.acknowledge(failed, by_holder=by_holder)

    def check(self, **kwargs: Any) -> Iterator[checks.CheckMessage]:
        yield from super().check(**kwargs)
        for problem in self.option_problems:
            yield checks.Error(
                f"TASKS[{self.alias!r}]['OPTIONS']: {problem}",
                obj=self.alias,
                id="threadmill.E003",
            )


def lease_token(task_result: TaskResult) -> str:
    """The owner token of a task result's lease: its attempt number and worker id, tab-joined."""
    if not task_result.worker_ids:
        raise ValueError(f"Task {task_result.id} is not leased: it has no attempt.")
    return f"{len(task_result.worker_ids)}\t{task_result.worker_ids[-1]}"


def retry_delay(failed: TaskResult) -> timedelta | None:
    """Ask the failed task's retry policy for the delay before its next attempt, or None."""
    policy = getattr(failed.task, "retry", None)
    if policy is None:
        return None
    try:
        delay = policy(TaskContext(task_result=failed))
    except Exception as error:  # a broken policy must not lose the task: fail it instead
        logger.exception("Retry policy of %s raised; failing the task", failed.task.module_path)
        failed.errors.append(error_from_exception(error))
        return None
    if delay is not None and not isinstance(delay, timedelta):
        logger.error("Retry policy of %s returned %r, not a timedelta", failed.task, delay)
        return None
    return delay
