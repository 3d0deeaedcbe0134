"""The SQL of the pool's hot path: leasing and acknowledging, one statement each.

The ORM builds a query anew for every call, which cost more than the task itself; these are
written once per vendor and shape (number of queues, of rows) and cached. Parameters are
always bound (`%s`), never formatted in. Times are bound through the connection's own
adaptation and read back through `Dialect.datetime`, so they are stored exactly as the ORM
stores them (SQLite: UTC text; PostgreSQL: timestamptz).

Every statement here names table `threadmill_task` (`threadmill.models.TaskRecord`).
"""

from datetime import datetime
from functools import cache
from typing import Any

from django.conf import settings
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

TABLE = "threadmill_task"

# The columns a lease returns, in this order (see LeasedRow in the backend).
LEASED_COLUMNS = (
    "seq",
    "result_id",
    "priority",
    "due_at",
    "attempts",
    "payload",
    "enqueued_at",
    "started_at",
    "worker_ids",
    "errors",
)


# Store a new READY task. Parameters: result_id, backend, queue_name, priority, payload,
# enqueued_at, due_at. (The columns' defaults live in the model, not the table: all are given.)
ENQUEUE = f"""
INSERT INTO {TABLE} (
    result_id, backend, queue_name, priority, status, payload, enqueued_at, due_at,
    attempts, worker_ids, errors
) VALUES (%s, %s, %s, %s, 'READY', %s, %s, %s, 0, '[]', '[]')"""


@cache
def lease(vendor: str, queues: int = 1) -> str:
    """Lease up to LIMIT due tasks of `queues` queues, best first, shared fairly; return them.

    Parameters: worker_id, worker_ids when it was "[]" (`[<id>]`), the suffix that replaces the
    closing bracket otherwise (`,<id>]`), now (last_attempted_at), now (started_at unless set),
    pool_id, lease_expires_at; then for each queue in turn backend, queue_name, now (due_at <=),
    LIMIT; then (several queues only) the LIMIT of the whole batch.
    Returns LEASED_COLUMNS of each leased row, in no particular order.

    Several queues share the batch round-robin: the best task of each queue (in the order they
    are given), then the second best of each, and so on, so a queue short of due tasks leaves
    its share to the others and a busy queue never starves another.

    One statement, so on its own it is one transaction: on SQLite a write statement takes the
    write lock when it starts (the busy timeout applies, as with BEGIN IMMEDIATE); PostgreSQL
    skips rows other transactions are leasing instead of waiting for them.
    """
    lock = " FOR UPDATE SKIP LOCKED" if vendor == "postgresql" else ""
    # Without statistics SQLite picks the index on due_at, which sorts every due task of the
    # backend for each batch; the index made for leasing reads just the batch, in order.
    indexed = " INDEXED BY threadmill_task_ready" if vendor == "sqlite" else ""
    best = (
        "SELECT seq{} FROM "
        f"{TABLE}{indexed}"
        " WHERE backend = %s AND queue_name = %s AND status = 'READY' AND due_at <= %s"
        f" ORDER BY priority DESC, due_at, seq LIMIT %s{lock}"
    )
    if queues == 1:
        chosen = best.format("")
    else:
        turns = "\n    UNION ALL\n    ".join(
            f"SELECT seq, {place} AS place, ROW_NUMBER() OVER "
            f"(ORDER BY priority DESC, due_at, seq) AS turn "
            f"FROM ({best.format(', priority, due_at')}) AS q{place}"
            for place in range(queues)
        )
        chosen = f"SELECT seq FROM (\n    {turns}\n) AS turns ORDER BY turn, place LIMIT %s"
    return f"""
UPDATE {TABLE} SET
    status = 'RUNNING',
    attempts = attempts + 1,
    worker_id = %s,
    worker_ids = CASE WHEN worker_ids = '[]' THEN %s
                      ELSE substr(worker_ids, 1, length(worker_ids) - 1) || %s END,
    prior_attempted_at = last_attempted_at,
    last_attempted_at = %s,
    started_at = COALESCE(started_at, %s),
    pool_id = %s,
    lease_expires_at = %s
WHERE seq IN (
    {chosen}
)
RETURNING {", ".join(LEASED_COLUMNS)}"""


@cache
def earliest_due(queues: int) -> str:
    """When the first READY task of the queues is (or was) due; NULL when there is none.

    Parameters: backend, then the `queues` queue names.
    """
    names = ", ".join(["%s"] * queues)
    return (
        f"SELECT MIN(due_at) FROM {TABLE} "
        f"WHERE backend = %s AND status = 'READY' AND queue_name IN ({names})"
    )


@cache
def acknowledge(vendor: str, rows: int) -> str:
    """Record the final results of `rows` leased tasks whose lease token still matches.

    Parameters: settled_by_holder; then per row result_id, attempts, worker_id (the lease
    token), status, finished_at, errors, return_value; then backend.
    Returns the result_id of each row written; a row missing had its lease ended.
    """
    if vendor == "postgresql":
        # VALUES needs its types spelled out: a bound NULL or text says nothing of them.
        row = "(%s, %s::integer, %s, %s, %s::timestamptz, %s, %s::text)"
        source = (
            f"(VALUES {', '.join([row] * rows)}) AS v"
            "(result_id, attempts, worker_id, status, finished_at, errors, return_value)"
        )
        columns = ("v.result_id", "v.attempts", "v.worker_id", "v.status", "v.finished_at")
        columns += ("v.errors", "v.return_value")
    else:  # SQLite names the columns of VALUES column1, column2, ...
        row = "(%s, %s, %s, %s, %s, %s, %s)"
        source = f"(VALUES {', '.join([row] * rows)}) AS v"
        columns = tuple(f"v.column{n}" for n in range(1, 8))
    result_id, attempts, worker_id, status, finished_at, errors, return_value = columns
    return f"""
UPDATE {TABLE} SET
    status = {status},
    finished_at = {finished_at},
    errors = {errors},
    return_value = {return_value},
    lease_expires_at = NULL,
    pool_id = NULL,
    settled_by_holder = %s
FROM {source}
WHERE {TABLE}.result_id = {result_id} AND {TABLE}.backend = %s
    AND {TABLE}.status = 'RUNNING' AND {TABLE}.attempts = {attempts}
    AND {TABLE}.worker_id = {worker_id}
RETURNING {TABLE}.result_id"""


class Dialect:
    """How one connection's vendor stores and returns times, for raw statements."""

    def __init__(self, connection: BaseDatabaseWrapper) -> None:
        self.vendor = connection.vendor
        self.connection = connection
        self.adapt = connection.ops.adapt_datetimefield_value

    def datetime(self, value: Any) -> datetime | None:
        """Turn a time a statement returned into what the ORM would have returned."""
        if value is None or self.vendor != "sqlite":
            return value  # psycopg returns datetimes as the ORM does (the connection's zone)
        # SQLite hands back text (or a naive datetime: Django's converter for the column type).
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        if settings.USE_TZ and timezone.is_naive(value):
            value = timezone.make_aware(value, self.connection.timezone)
        return value
