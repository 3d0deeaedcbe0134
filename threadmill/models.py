"""Tables of the database backend: one row per task, one row per living pool.

Only `threadmill.backends.database` reads or writes them. The task payload and the other JSON
fields are the exact text `threadmill.backends.serialization` wrote; nothing rewrites them.
"""

from django.db import models
from django.db.models import Q
from django.tasks import TaskResultStatus

READY = TaskResultStatus.READY.value
RUNNING = TaskResultStatus.RUNNING.value
FINISHED = [TaskResultStatus.SUCCESSFUL.value, TaskResultStatus.FAILED.value]


class TaskRecord(models.Model):
    """A task of a database backend, from its enqueueing until its result expires.

    A READY row is *due* once `due_at` has passed (scheduled before that). A RUNNING row is
    leased: its lease token is (`attempts`, `worker_id`), which is (len(worker_ids),
    worker_ids[-1]) of the TaskResult handed to the lease holder.
    """

    # The sequence number breaks ties of `due_at`, so equal times still run first in, first out.
    seq = models.BigAutoField(primary_key=True)
    result_id = models.CharField(max_length=64, unique=True)
    backend = models.CharField(max_length=255)
    queue_name = models.CharField(max_length=255)
    priority = models.SmallIntegerField()
    status = models.CharField(max_length=10, choices=TaskResultStatus.choices)
    payload = models.TextField()
    enqueued_at = models.DateTimeField()
    # When the task may run: enqueued_at, its run_after, or the time of its next retry.
    due_at = models.DateTimeField()
    started_at = models.DateTimeField(null=True)
    last_attempted_at = models.DateTimeField(null=True)
    # last_attempted_at before the current lease, put back when the lease is released.
    prior_attempted_at = models.DateTimeField(null=True)
    finished_at = models.DateTimeField(null=True)
    attempts = models.PositiveIntegerField(default=0)
    worker_id = models.CharField(max_length=255, null=True)
    worker_ids = models.TextField(default="[]")
    errors = models.TextField(default="[]")
    return_value = models.TextField(null=True)
    pool_id = models.CharField(max_length=255, null=True)
    lease_expires_at = models.DateTimeField(null=True)
    # Who recorded the final result: its lease holder (True), or someone ending the lease on
    # its behalf (False). Only the holder's own repeated acknowledgement is accepted again.
    settled_by_holder = models.BooleanField(null=True)

    class Meta:
        db_table = "threadmill_task"
        indexes = [
            # Leasing: the next due task of one queue, highest priority first, then oldest.
            models.Index(
                fields=["backend", "queue_name", "-priority", "due_at", "seq"],
                condition=Q(status=READY),
                name="threadmill_task_ready",
            ),
            # Waiting and counting: when the next scheduled task becomes due.
            models.Index(
                fields=["backend", "due_at"],
                condition=Q(status=READY),
                name="threadmill_task_due",
            ),
            # Maintenance: expired leases.
            models.Index(
                fields=["backend", "lease_expires_at"],
                condition=Q(status=RUNNING),
                name="threadmill_task_running",
            ),
            # Maintenance: expired results.
            models.Index(
                fields=["backend", "finished_at"],
                condition=Q(status__in=FINISHED),
                name="threadmill_task_finished",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.result_id} ({self.status})"


class PoolHeartbeat(models.Model):
    """The heartbeat of a pool, so other pools can settle its leases once it is gone."""

    backend = models.CharField(max_length=255)
    pool_id = models.CharField(max_length=255)
    # The pool is dead once this passes: its last heartbeat plus its own pool_ttl.
    expires_at = models.DateTimeField()

    class Meta:
        db_table = "threadmill_pool"
        constraints = [
            models.UniqueConstraint(fields=["backend", "pool_id"], name="threadmill_pool_unique")
        ]

    def __str__(self) -> str:
        return f"{self.pool_id} (alive until {self.expires_at})"
