"""What one pool was asked to do: the parsed and validated flags of `manage.py threadmill`."""

from dataclasses import dataclass

# Seconds between two turns of a worker process's main loop, at most: each turn moves its
# heartbeat on the scoreboard, writes out buffered log lines and updates the process title.
TICK_INTERVAL = 0.2

# Seconds a task may overrun its timeout after the exception raised in its thread, before the
# arbiter kills its worker process (the task is stuck in C, where the exception cannot land).
TIMEOUT_GRACE = 2.0

# An idle lease call waits for work without a deadline: the backend wakes it when a task is
# queued, and `interrupt(worker_id)` when its process stops. No polling while idle.
FETCH_TIMEOUT: float | None = None

# Seconds between two interrupts of a stopping worker process's lease call, while it has not
# returned (an interrupt can be lost with the reply of the wait that took it).
INTERRUPT_REPEAT = 1.0

# How a worker process publishes outcomes (see pool/process.py): at most HOLD_LIMIT held
# unpublished in its scoreboard; sent once PUBLISH_BATCH are waiting, or the oldest has waited
# HOLD_AGE seconds, or no more tasks are buffered, so that short tasks share a round trip.
HOLD_LIMIT = 64
PUBLISH_BATCH = 16
HOLD_AGE = 0.01

# Exit code of a worker process that could not boot, and of a pool that gave up booting them.
WORKER_BOOT_ERROR = 3

# Consecutive boot failures after which the pool stops instead of spawning again.
MAX_BOOT_FAILURES = 5


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolConfig:
    """Flags of one pool; durations in seconds, memory in bytes."""

    backend_alias: str = "default"
    queues: tuple[str, ...] = ("default",)
    processes: int = 1
    threads: int = 1
    prefetch: int = 0
    max_tasks: int | None = None
    max_tasks_jitter: int = 0
    max_memory: int | None = None
    timeout: float | None = None
    graceful_timeout: float = 30.0
    heartbeat_timeout: float = 30.0
    exit_empty: bool = False
    log_format: str = "text"

    @property
    def scoreboard_slots(self) -> int:
        """Slots a worker process needs: one per thread (its running task, or its outcome
        it waits to see published) and one per outcome held (at most HOLD_LIMIT)."""
        return self.threads + HOLD_LIMIT
