"""A durable task backend on a Django database: SQLite embedded, PostgreSQL for production.

Guarantees
- An enqueue is one INSERT: the task is stored whole or not at all. Inside the caller's
  transaction it commits (or rolls back) with the caller's own writes.
- Pending work (ready, scheduled, running) never expires; only a finished result does,
  `result_ttl` after it finished (trimmed by `maintain`).
- Delivery is at least once. A lease ends by acknowledgement, retry or release, or when it
  expires (`lease_ttl`; a live pool's heartbeat renews its leases) or its pool's heartbeat stops
  (`pool_ttl`); a late acknowledgement from a former holder is refused and logged, never
  written. Every end of a lease is a compare-and-set on the lease token
  (attempts, worker id), so two parties can never both settle one attempt.
- Order: higher priority first, then first due first, within a queue (a scheduled or retried
  task takes its place in line when it falls due); several queues are served round-robin,
  so a busy queue never starves another.
- The payload (args, kwargs) and the return value are stored as the exact text
  `serialization` produced and are never rewritten.
- Only a `django.tasks.Task` named by a payload is ever returned by `acquire`; a payload naming
  anything else fails with `InvalidTaskPath` and nothing of it runs.

Limits
- Times come from the clock of each calling machine; keep the clocks in sync (NTP).
- SQLite serializes writers: fine for a handful of worker processes on one machine, not for
  many machines (use PostgreSQL). WAL mode is switched on for the database on first use.
- An idle acquire on SQLite polls (a cheap `PRAGMA data_version` check, backing off to
  0.1 s); on PostgreSQL it sleeps on LISTEN/NOTIFY.
"""

import contextlib
import functools
import itertools
import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from time import monotonic
from typing import Any, NamedTuple

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.db import connections
from django.db.models import Case, Count, F, Q, QuerySet, When
from django.tasks import TaskResult, TaskResultStatus
from django.tasks.base import TaskError
from django.tasks.exceptions import TaskResultDoesNotExist
from django.tasks.signals import task_enqueued
from django.utils import timezone
from django.utils.crypto import get_random_string

from threadmill.backends.base import COMMON_OPTIONS, AcknowledgeableTaskBackend
from threadmill.backends.database import queries, vendors
from threadmill.backends.serialization import (
    StoredTask,
    encode_errors,
    encode_payload,
    encode_return_value,
    encode_worker_ids,
    enqueued_result,
    new_task_id,
    normalized_arguments,
    synthetic_error,
    to_task_result,
)
from threadmill.exceptions import AcknowledgementTimeout, InvalidTaskPath
from threadmill.tasks import Task

logger = logging.getLogger("threadmill.backends.database")

READY = TaskResultStatus.READY.value
RUNNING = TaskResultStatus.RUNNING.value
FINISHED = (TaskResultStatus.SUCCESSFUL.value, TaskResultStatus.FAILED.value)

# How long an idle acquire waits at most before it looks at the table again anyway.
LONGEST_WAIT = 30.0

# Rows per acknowledging statement (SQLite binds at most 32,766 parameters, 7 a row).
ACKNOWLEDGE_CHUNK = 256

# After losing a race for due tasks, look again after this long, doubling up to 32 times it.
RACE_BACKOFF = 0.001


def _gated[F: Callable](method: F) -> F:
    """Run a method inside the fork gate (see vendors.ForkGate)."""

    @functools.wraps(method)
    def gated(*args: Any, **kwargs: Any) -> Any:
        with vendors.fork_gate.passage():
            return method(*args, **kwargs)

    return gated  # type: ignore[return-value]


class LeasedRow(NamedTuple):
    """A row as the leasing statement returns it (queries.LEASED_COLUMNS)."""

    seq: int
    result_id: str
    priority: int
    due_at: Any  # as stored: compared only with others of the same batch
    attempts: int
    payload: str
    enqueued_at: Any
    started_at: Any
    worker_ids: str
    errors: str


def _models():
    # The models import late: backends are built while settings load, before apps are ready.
    from threadmill.models import PoolHeartbeat, TaskRecord

    return TaskRecord, PoolHeartbeat


class DatabaseTaskBackend(AcknowledgeableTaskBackend):
    """Tasks in a table of the database `OPTIONS["database"]` (a DATABASES alias)."""

    known_options = {**COMMON_OPTIONS, "database": ("default", "alias")}

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        # enqueue and get_result use the caller's connection to `database`, so an enqueue joins
        # the caller's transaction; the pool's operations use `worker_database`, a persistent
        # connection of their own (see vendors.worker_alias).
        self.database: str = self.settings["database"]
        self._rotation = itertools.count()
        self._local = threading.local()  # per thread: the dialect of its connection
        self._idle_waiters: list[vendors.Waiter] = []  # see `_waiter`

    # --- helpers ----------------------------------------------------------------------------

    @property
    def worker_database(self) -> str:
        """The alias of the connection the pool's operations use."""
        return vendors.worker_alias(self.database)

    @property
    def connection(self):
        """This thread's connection for the pool's operations, ready for use."""
        return vendors.ready(connections[self.worker_database])

    def _tasks(self, using: str | None = None) -> QuerySet:
        TaskRecord, _ = _models()
        return TaskRecord.objects.using(using or self.worker_database).filter(backend=self.alias)

    def _pools(self) -> QuerySet:
        _, PoolHeartbeat = _models()
        return PoolHeartbeat.objects.using(self.worker_database).filter(backend=self.alias)

    def _write[T](self, operation: Callable[[], T], connection=None) -> T:
        """Run a write, riding out SQLite's lock waits when outside the caller's transaction."""
        return vendors.retrying_when_locked(connection or self.connection, operation)

    def _queues(self, queue_names: tuple[str, ...]) -> list[str]:
        if not queue_names:
            return sorted(self.queues)
        unknown = [name for name in queue_names if name not in self.queues]
        if unknown:
            raise ValueError(f"Unknown queue(s) {unknown} for backend {self.alias!r}.")
        return list(dict.fromkeys(queue_names))

    def _to_result(self, record) -> TaskResult:
        """Build the TaskResult a row stands for (raises InvalidTaskPath for a bad payload)."""
        stored = StoredTask(
            id=record.result_id,
            payload=record.payload.encode(),
            status=record.status,
            worker_ids=record.worker_ids.encode(),
            errors=record.errors.encode(),
            return_value=None if record.return_value is None else record.return_value.encode(),
        )
        try:
            result = to_task_result(stored, self.alias)
        except (ValueError, KeyError, TypeError) as error:  # JSON that is no payload
            raise InvalidTaskPath(f"Unreadable payload: {error!r}") from error
        # The row's times as they are: going through seconds since the epoch could round them.
        for name in ("enqueued_at", "started_at", "last_attempted_at", "finished_at"):
            object.__setattr__(result, name, getattr(record, name))
        return result

    # --- enqueue and read -------------------------------------------------------------------

    @_gated
    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        self.validate_task(task)
        now = timezone.now()
        result_id = new_task_id()
        args, kwargs = normalized_arguments(args, kwargs)
        payload = encode_payload(task, args, kwargs).decode()
        connection = vendors.ready(connections[self.database])
        dialect = queries.Dialect(connection)
        params = [
            *(result_id, self.alias, task.queue_name, task.priority, payload),
            *(dialect.adapt(now), dialect.adapt(task.run_after or now)),
        ]

        def insert() -> None:
            with connection.cursor() as cursor:
                cursor.execute(queries.ENQUEUE, params)

        # One INSERT, so no read-then-write transaction: SQLite's busy timeout applies.
        self._write(insert, connection)
        result = enqueued_result(task, result_id, now, args, kwargs, self.alias)
        task_enqueued.send(type(self), task_result=result)
        return result

    @_gated
    def get_result(self, result_id: str) -> TaskResult:
        record = self._tasks(self.database).filter(result_id=result_id).first()
        if record is None:
            raise TaskResultDoesNotExist(result_id)
        return self._to_result(record)

    # --- leasing ----------------------------------------------------------------------------

    def acquire_many(
        self,
        *queue_names: str,
        count: int,
        timeout: float | None = None,
        worker_id: str | None = None,
        pool_id: str | None = None,
    ) -> list[TaskResult]:
        queues = self._queues(queue_names)
        # Nobody can interrupt an anonymous worker: it needs no interrupt event.
        interrupted = vendors.interrupts.event(worker_id) if worker_id else None
        worker_id = worker_id or f"anonymous:{get_random_string(8)}"
        deadline = None if timeout is None else monotonic() + timeout
        with self._waiter() as waiter:
            # Armed before the first look, so news arriving between the look and the wait is kept.
            waiter.arm({f"{self.alias}/{name}" for name in queues})
            races = 0
            while True:
                leased, next_due, raced = self._lease(queues, count, worker_id, pool_id)
                if leased:
                    return leased
                wait = LONGEST_WAIT if deadline is None else deadline - monotonic()
                if raced:
                    # Due tasks were there, but others were leasing them: no notification will
                    # come for those, so look again soon (their transactions take milliseconds).
                    races += 1
                    wait = min(wait, RACE_BACKOFF * 2 ** min(races, 5))
                elif next_due is not None:  # a scheduled task falls due: wake up for it
                    until_due = (next_due - timezone.now()).total_seconds() + 0.001
                    wait = min(wait, max(until_due, 0.001))
                if wait <= 0 or vendors.interrupts.take(interrupted):
                    return []
                waiter.wait(min(wait, LONGEST_WAIT), interrupted)
                if vendors.interrupts.take(interrupted):
                    return []

    @_gated
    def interrupt(self, worker_id: str) -> None:
        vendors.interrupts.event(worker_id).set()
        # A waiter of this process sleeps in LISTEN: any notification makes it look at the
        # event. (Only waits in this process can be interrupted.)
        vendors.wake_listeners(self.connection)

    @contextlib.contextmanager
    def _waiter(self) -> Iterator[vendors.Waiter]:
        """A waiter no other call uses meanwhile. Borrowed, not one per thread: a process keeps
        as many (on PostgreSQL each holds a LISTEN connection) as calls ever waited at once,
        and a pool's threads take turns at leasing, so that is one per worker process."""
        try:
            waiter = self._idle_waiters.pop()  # atomic: no lock a fork could leave held
        except IndexError:
            waiter = vendors.waiter_for(self.worker_database)
        try:
            yield waiter
        finally:
            self._idle_waiters.append(waiter)

    @_gated
    def _lease(
        self, queues: list[str], count: int, worker_id: str, pool_id: str | None
    ) -> tuple[list[TaskResult], datetime | None, bool]:
        """Lease up to `count` due tasks.

        Returns the leased tasks, when the next scheduled task falls due, and whether due
        tasks were seen but others leased them first.
        """
        now = timezone.now()
        connection = self.connection
        dialect = self._dialect(connection)
        # While batches come back full there is surely more: lease straight away. Otherwise one
        # indexed read, without a lock or a transaction, tells an idle caller all it needs:
        # whether to lease now, or how long to wait for the first scheduled task.
        busy = getattr(self._local, "busy", False)
        if not busy:
            earliest = self._earliest_due(connection, dialect, queues)
            if earliest is None or earliest > now:
                return [], earliest, False

        def lease() -> list[LeasedRow]:
            return self._lease_rows(connection, dialect, queues, count, worker_id, pool_id, now)

        rows = self._write(lease)
        updated = len(rows)
        self._local.busy = updated == count
        leased = self._results(rows, dialect, now)
        if leased:
            return leased, None, False
        if updated:  # every row leased was refused: others may be due, look again soon
            return [], None, True
        if busy:  # the look skipped above
            earliest = self._earliest_due(connection, dialect, queues)
            if earliest is None or earliest > now:
                return [], earliest, False
        return [], None, True

    def _dialect(self, connection) -> queries.Dialect:
        dialect = getattr(self._local, "dialect", None)
        if dialect is None or dialect.connection is not connection:
            dialect = self._local.dialect = queries.Dialect(connection)
        return dialect

    def _earliest_due(self, connection, dialect: queries.Dialect, queues: list[str]):
        with connection.cursor() as cursor:
            cursor.execute(queries.earliest_due(len(queues)), [self.alias, *queues])
            return dialect.datetime(cursor.fetchone()[0])

    def _lease_rows(
        self,
        connection,
        dialect: queries.Dialect,
        queues: list[str],
        count: int,
        worker_id: str,
        pool_id: str | None,
        now: datetime,
    ) -> list[LeasedRow]:
        """Lease up to `count` due rows in one statement, fairly among the queues."""
        worker_json = encode_worker_ids([worker_id]).decode()[1:-1]
        at = dialect.adapt(now)
        expires_at = dialect.adapt(now + timedelta(seconds=self.lease_ttl))
        params = [worker_id, f"[{worker_json}]", f",{worker_json}]", at, at, pool_id, expires_at]
        # The queue first in line gets the odd task of a batch; it takes turns.
        start = next(self._rotation) % len(queues)
        for name in queues[start:] + queues[:start]:
            params += [self.alias, name, at, count]
        if len(queues) > 1:
            params.append(count)
        with connection.cursor() as cursor:
            cursor.execute(queries.lease(dialect.vendor, len(queues)), params)
            return [LeasedRow(*row) for row in cursor.fetchall()]

    def _results(
        self, rows: list[LeasedRow], dialect: queries.Dialect, now: datetime
    ) -> list[TaskResult]:
        """Build the leased rows' TaskResults, best first; refuse rows that name no Task."""
        # The batch in the order it is best run: by priority, then by turn. (Times of one
        # vendor compare as stored: SQLite's UTC text sorts as the index does.)
        rows.sort(key=lambda row: (-row.priority, row.due_at, row.seq))
        leased = []
        for row in rows:
            stored = StoredTask(
                id=row.result_id,
                payload=row.payload.encode(),
                status=RUNNING,
                worker_ids=row.worker_ids.encode(),
                errors=row.errors.encode(),
            )
            try:
                result = to_task_result(stored, self.alias)
            except (ValueError, KeyError, TypeError, InvalidTaskPath) as error:
                if not isinstance(error, InvalidTaskPath):
                    error = InvalidTaskPath(f"Unreadable payload: {error!r}")
                self._refuse(row, error, now)
                continue
            started_at = dialect.datetime(row.started_at)
            # The row's times as they are: going through seconds since the epoch could round.
            object.__setattr__(result, "enqueued_at", dialect.datetime(row.enqueued_at))
            object.__setattr__(result, "started_at", started_at)
            object.__setattr__(result, "last_attempted_at", now)
            leased.append(result)
        return leased

    def _refuse(self, record, error: InvalidTaskPath, now: datetime) -> None:
        """Fail a leased task whose payload names no Task; nothing of it is run."""
        logger.error("Task %s refused: %s", record.result_id, error)
        errors = [TaskError(**e) for e in json.loads(record.errors)]
        errors.append(synthetic_error(InvalidTaskPath, str(error)))
        TaskRecord, _ = _models()
        leased = {"seq": record.seq, "status": RUNNING, "attempts": record.attempts}
        TaskRecord.objects.using(self.worker_database).filter(**leased).update(
            status=TaskResultStatus.FAILED.value,
            finished_at=now,
            errors=encode_errors(errors).decode(),
            lease_expires_at=None,
            pool_id=None,
            settled_by_holder=False,
        )

    # --- ending a lease ---------------------------------------------------------------------

    def _leased_by(self, task_result: TaskResult) -> QuerySet:
        """The task's row if `task_result`'s lease still holds (the compare of compare-and-set)."""
        if not task_result.worker_ids:
            raise ValueError(f"Task {task_result.id} is not leased: it has no attempt.")
        return self._tasks().filter(
            result_id=task_result.id,
            status=RUNNING,
            attempts=len(task_result.worker_ids),
            worker_id=task_result.worker_ids[-1],
        )

    @_gated
    def acknowledge(self, task_result: TaskResult, *, by_holder: bool = True) -> bool:
        return self._acknowledge([task_result], by_holder)[0]

    @_gated
    def acknowledge_many(self, task_results: list[TaskResult]) -> list[bool]:
        """Acknowledge several leased tasks in one transaction (one commit, one fsync)."""
        return self._acknowledge(task_results, by_holder=True)

    def _acknowledge(self, task_results: list[TaskResult], by_holder: bool) -> list[bool]:
        # Everything is encoded before anything is written: a bad return value writes nothing.
        rows = [self._final_row(result) for result in task_results]
        connection = self.connection
        dialect = self._dialect(connection)
        for row in rows:
            row[4] = dialect.adapt(row[4])

        def write_chunk(chunk: list[list[Any]]) -> set[str]:
            params = [by_holder, *itertools.chain.from_iterable(chunk), self.alias]
            with connection.cursor() as cursor:
                cursor.execute(queries.acknowledge(dialect.vendor, len(chunk)), params)
                return {result_id for (result_id,) in cursor.fetchall()}

        def write() -> set[str]:
            size = ACKNOWLEDGE_CHUNK
            chunks = [rows[i : i + size] for i in range(0, len(rows), size)]
            if len(chunks) == 1:  # one UPDATE is atomic on its own: no transaction needed
                return write_chunk(chunks[0])
            with vendors.write_transaction(connection):
                return set().union(*map(write_chunk, chunks))

        recorded = self._write(write) if rows else set()
        return [
            result.id in recorded or self._refused(result, by_holder) for result in task_results
        ]

    def _final_row(self, task_result: TaskResult) -> list[Any]:
        """The lease token and final fields of a task result, as acknowledge() binds them."""
        if task_result.status not in (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED):
            raise ValueError(f"Only a finished task can be acknowledged, not {task_result.status}.")
        if not task_result.worker_ids:
            raise ValueError(f"Task {task_result.id} is not leased: it has no attempt.")
        return_value = None
        if task_result.status == TaskResultStatus.SUCCESSFUL:
            return_value = encode_return_value(task_result._return_value).decode()
        return [
            task_result.id,
            len(task_result.worker_ids),
            task_result.worker_ids[-1],
            task_result.status.value,
            task_result.finished_at or timezone.now(),
            encode_errors(task_result.errors).decode(),
            return_value,
        ]

    def _refused(self, task_result: TaskResult, by_holder: bool) -> bool:
        """Tell a holder's repeated acknowledgement (True) from a late one (logged, False)."""
        if by_holder and self._tasks().filter(
            result_id=task_result.id,
            status__in=FINISHED,
            attempts=len(task_result.worker_ids),
            worker_id=task_result.worker_ids[-1],
            settled_by_holder=True,
        ):
            return True  # this holder's repeated call (its first reply was lost)
        logger.warning(
            "Late result of task %s discarded: its lease (attempt %s by %s) had ended; "
            "the recorded status %s stands",
            task_result.id,
            len(task_result.worker_ids),
            task_result.worker_ids[-1],
            self._status_of(task_result.id),
        )
        return False

    @_gated
    def release(self, task_result: TaskResult) -> bool:
        leased = self._leased_by(task_result)
        fields = _released_fields(task_result.worker_ids[:-1])
        released = self._write(lambda: leased.update(**fields))
        if not released:
            logger.warning("Task %s not released: its lease had ended", task_result.id)
        return bool(released)

    @_gated
    def retry(self, task_result: TaskResult, run_after: datetime) -> bool:
        leased = self._leased_by(task_result)
        retried = self._write(
            lambda: leased.update(
                status=READY,
                due_at=run_after,
                errors=encode_errors(task_result.errors).decode(),
                finished_at=None,
                return_value=None,
                lease_expires_at=None,
                pool_id=None,
            )
        )
        if not retried:
            logger.warning("Task %s not retried: its lease had ended", task_result.id)
        return bool(retried)

    def _status_of(self, result_id: str) -> str:
        status = self._tasks().filter(result_id=result_id).values_list("status", flat=True)
        return next(iter(status), "(trimmed)")

    # --- maintenance ------------------------------------------------------------------------

    @_gated
    def maintain(self, *pool_ids: str | None) -> dict[str, int]:
        # One clock reading for the whole pass, so the heartbeat and the leases renewed here are
        # never found expired by this same pass, however slow its writes are.
        now = timezone.now()
        report = {"promoted": 0, "settled": 0, "trimmed": 0}
        alive = [pool_id for pool_id in pool_ids if pool_id]
        if alive:
            self._write(lambda: self._heartbeat(alive, now))
        # Scheduled tasks need no promotion here: a row is leasable as soon as due_at passes.
        report["settled"] = self._settle_orphans(now)
        report["trimmed"] = self._trim(now)
        return report

    def _heartbeat(self, pool_ids: list[str], now: datetime) -> None:
        """Keep the pools alive, and with them their leases (even of tasks in their buffers)."""
        with vendors.write_transaction(self.connection):
            self._set_heartbeats(pool_ids, now + timedelta(seconds=self.pool_ttl))
            self._tasks().filter(status=RUNNING, pool_id__in=pool_ids).update(
                lease_expires_at=now + timedelta(seconds=self.lease_ttl)
            )

    def _set_heartbeats(self, pool_ids: list[str], expires_at: datetime) -> None:
        _, PoolHeartbeat = _models()
        PoolHeartbeat.objects.using(self.worker_database).bulk_create(
            [
                PoolHeartbeat(backend=self.alias, pool_id=pool_id, expires_at=expires_at)
                for pool_id in dict.fromkeys(pool_ids)
            ],
            update_conflicts=True,
            unique_fields=["backend", "pool_id"],
            update_fields=["expires_at"],
        )

    def _settle_orphans(self, now: datetime) -> int:
        """Settle leases that expired or whose pool died, a batch per transaction."""
        settled = 0
        while True:
            done, found = self._write(lambda: self._settle_orphan_batch(now))
            settled += done
            if found < self.batch_size or not done:
                break
        running_pools = self._tasks().filter(status=RUNNING, pool_id__isnull=False)
        self._write(
            lambda: (
                self._pools()
                .filter(expires_at__lt=now)
                .exclude(pool_id__in=running_pools.values("pool_id"))
                .delete()
            )
        )
        return settled

    def _settle_orphan_batch(self, now: datetime) -> tuple[int, int]:
        with vendors.write_transaction(self.connection):
            dead_pools = self._pools().filter(expires_at__lt=now).values("pool_id")
            orphans = list(
                self._tasks()
                .filter(status=RUNNING)
                .filter(Q(lease_expires_at__lt=now) | Q(pool_id__in=dead_pools))
                .order_by("seq")
                .select_for_update(skip_locked=True)[: self.batch_size]
            )
            dead = set(self._pools().filter(expires_at__lt=now).values_list("pool_id", flat=True))
            settled = 0
            for record in orphans:
                if record.pool_id in dead:
                    message = (
                        f"pool {record.pool_id} stopped sending heartbeats while attempt "
                        f"{record.attempts} ran"
                    )
                else:
                    message = (
                        f"the lease of attempt {record.attempts} by {record.worker_id} expired"
                    )
                logger.warning("Task %s orphaned: %s", record.result_id, message)
                try:
                    task_result = self._to_result(record)
                except InvalidTaskPath as error:
                    self._refuse(record, error, now)
                    settled += 1
                    continue
                error = synthetic_error(AcknowledgementTimeout, message)
                settled += self.settle(task_result, error)
            return settled, len(orphans)

    def _trim(self, now: datetime) -> int:
        """Delete finished results older than result_ttl, batch_size rows per statement."""
        TaskRecord, _ = _models()
        cutoff = now - timedelta(seconds=self.result_ttl)
        expired = self._tasks().filter(status__in=FINISHED, finished_at__lt=cutoff)
        trimmed = 0
        while True:
            batch = expired.order_by("finished_at").values("seq")[: self.batch_size]
            deleted, _ = self._write(
                lambda batch=batch: (
                    TaskRecord.objects.using(self.worker_database).filter(seq__in=batch).delete()
                )
            )
            trimmed += deleted
            if deleted < self.batch_size:
                return trimmed

    @_gated
    def release_pool(self, pool_id: str) -> int:
        TaskRecord, _ = _models()

        def release_all() -> int:
            with vendors.write_transaction(self.connection):
                released = 0
                held = self._tasks().filter(status=RUNNING, pool_id=pool_id).select_for_update()
                for record in held:
                    before = json.loads(record.worker_ids)[:-1]
                    released += (
                        TaskRecord.objects.using(self.worker_database)
                        .filter(seq=record.seq, status=RUNNING, attempts=record.attempts)
                        .update(**_released_fields(before))
                    )
                self._pools().filter(pool_id=pool_id).delete()
                return released

        return self._write(release_all)

    @_gated
    def forget_pool(self, pool_id: str) -> None:
        # Not a removal: a heartbeat that ended long ago. The next maintenance pass settles any
        # lease the pool still holds (none, after a clean stop), then drops the pool.
        ended = timezone.now() - timedelta(days=1)
        self._write(lambda: self._set_heartbeats([pool_id], ended))

    @_gated
    def count_pending(self, *queue_names: str) -> dict[str, int]:
        now = timezone.now()
        return (
            self._tasks()
            # Finished results (a day's worth, by default) are not read at all.
            .filter(queue_name__in=self._queues(queue_names), status__in=(READY, RUNNING))
            .aggregate(
                ready=Count("seq", filter=Q(status=READY, due_at__lte=now)),
                scheduled=Count("seq", filter=Q(status=READY, due_at__gt=now)),
                running=Count("seq", filter=Q(status=RUNNING)),
            )
        )

    # --- checks -----------------------------------------------------------------------------

    def check(self, **kwargs: Any) -> Iterator[checks.CheckMessage]:
        yield from super().check(**kwargs)
        database = self.database
        if not isinstance(database, str) or database not in settings.DATABASES:
            yield checks.Error(
                f"TASKS[{self.alias!r}]['OPTIONS']['database'] is {database!r}, "
                "which is not an alias of DATABASES.",
                hint=f"Use one of: {', '.join(map(repr, settings.DATABASES))}.",
                obj=self.alias,
                id="threadmill.E010",
            )
            return
        if not apps.is_installed("threadmill"):
            yield checks.Error(
                "The database task backend keeps its tasks in the tables of the threadmill app.",
                hint="Add 'threadmill' to INSTALLED_APPS, then run manage.py migrate.",
                obj=self.alias,
                id="threadmill.E011",
            )
        connection = connections[database]
        if connection.vendor == "sqlite" and connection.is_in_memory_db():
            yield checks.Error(
                f"DATABASES[{database!r}] is an in-memory SQLite database, which worker "
                "processes cannot share.",
                hint="Give the database a file NAME.",
                obj=self.alias,
                id="threadmill.E012",
            )
        elif connection.vendor not in ("sqlite", "postgresql"):
            yield checks.Warning(
                f"The database task backend is tested on SQLite and PostgreSQL, "
                f"not on {connection.vendor}; idle workers will poll.",
                obj=self.alias,
                id="threadmill.W010",
            )


def _released_fields(worker_ids_before: list[str]) -> dict[str, Any]:
    """The fields that put a leased task back as it was before its lease."""
    return {
        "status": READY,
        "attempts": F("attempts") - 1,
        "worker_id": worker_ids_before[-1] if worker_ids_before else None,
        "worker_ids": encode_worker_ids(worker_ids_before).decode(),
        "last_attempted_at": F("prior_attempted_at"),
        "prior_attempted_at": None,
        "started_at": Case(When(attempts=1, then=None), default=F("started_at")),
        "lease_expires_at": None,
        "pool_id": None,
    }
