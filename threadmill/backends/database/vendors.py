"""What differs between SQLite and PostgreSQL: write transactions, lock waits, idle waiting.

SQLite has one writer at a time. A transaction that reads first and writes later can find the
lock taken and fail at once ("database is locked"), whatever the busy timeout; so every
read-then-write transaction here starts with BEGIN IMMEDIATE, which takes the write lock up
front and waits for it. The database runs in WAL mode so readers never block the writer.
Writers of this machine line up for the lock in the kernel before asking SQLite for it (see
WriterLine), so none sleeps in SQLite's busy wait past the moment the lock is free.

PostgreSQL wakes idle waiters with LISTEN/NOTIFY: a trigger (migration 0002) notifies channel
`threadmill` with "<backend alias>/<queue name>" whenever a task becomes READY.
"""

import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from django.db import OperationalError, connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper

logger = logging.getLogger("threadmill.backends.database")

CHANNEL = "threadmill"

# How long an operation outside the caller's transaction keeps retrying a locked SQLite
# database (each try already waits the connection's busy timeout) before giving up.
LOCKED_PATIENCE = 120.0

# The idle poll of SQLite: it checks `PRAGMA data_version` (no table is read), first every
# POLL_FIRST seconds, doubling up to POLL_LONGEST, so an idle worker costs next to nothing.
POLL_FIRST = 0.002
POLL_LONGEST = 0.1

# A LISTEN wait is cut into slices this long, as a safety net should a notification be lost
# (the listening connection was re-opened, say); a slice ending just means another look.
LONGEST_LISTEN = 30.0


@contextmanager
def write_transaction(connection: BaseDatabaseWrapper) -> Iterator[None]:
    """Run a block in a transaction that, on SQLite, holds the write lock from its start."""
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        # Inside the caller's transaction its mode stands; PostgreSQL needs nothing special.
        with transaction.atomic(using=connection.alias):
            yield
        return
    connection.ensure_connection()  # connecting resets transaction_mode from the settings
    previous = connection.transaction_mode
    connection.transaction_mode = "IMMEDIATE"
    try:
        with transaction.atomic(using=connection.alias):
            connection.transaction_mode = previous  # BEGIN IMMEDIATE was sent
            yield
    finally:
        connection.transaction_mode = previous


def retrying_when_locked[T](connection: BaseDatabaseWrapper, operation: Callable[[], T]) -> T:
    """Run `operation`, trying again while SQLite reports the database locked or busy.

    Inside the caller's transaction nothing can be retried (the transaction is spoiled), so
    the error goes to the caller there.
    """
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        return operation()
    deadline = time.monotonic() + LOCKED_PATIENCE
    delay = 0.005
    while True:
        try:
            with writer_line.turn(connection):
                return operation()
        except OperationalError as error:
            message = str(error)
            if ("locked" not in message and "busy" not in message) or (time.monotonic() > deadline):
                raise
            logger.debug("SQLite database busy (%s); trying again in %.3fs", message, delay)
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


class WriterLine:
    """Lines up this machine's writers to a SQLite database in the kernel, first come first served.

    SQLite's own wait for its write lock sleeps and looks again (1, 2, 5, 10 ms, ...): a writer
    that finds the lock taken during another's commit (an fsync) sleeps well past its end, and
    with a few threads and processes writing, the database stands idle most of the time. So a
    write outside the caller's transaction first takes a lock of this process (threads) and an
    flock() on a file beside the database (processes), both of which wake the next writer the
    moment the last lets go. Writers that do not pass here (the project's own, other machines')
    still meet SQLite's lock and its busy timeout, as before.
    """

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        # Also the child side of a fork (the fork gate keeps any turn from being held across
        # it): the child's copies of the files share their locks with the parent, so the child
        # opens its own.
        for _, fd in getattr(self, "_lines", {}).values():
            if fd is not None:
                with suppress(OSError):
                    os.close(fd)
        self._guard = threading.Lock()
        self._lines: dict[str, tuple[threading.Lock, int | None]] = {}

    def _line(self, connection: BaseDatabaseWrapper) -> tuple[threading.Lock, int | None]:
        name = str(connection.settings_dict["NAME"])
        line = self._lines.get(name)
        if line is None:
            with self._guard:
                line = self._lines.get(name)
                if line is None:
                    fd = None
                    if not connection.is_in_memory_db():
                        try:
                            fd = os.open(
                                f"{name}-threadmill-writers", os.O_RDWR | os.O_CREAT, 0o644
                            )
                        except OSError as error:  # then processes meet in SQLite's busy wait
                            logger.debug("No writer line for SQLite database %s: %s", name, error)
                    line = self._lines[name] = (threading.Lock(), fd)
        return line

    @contextmanager
    def turn(self, connection: BaseDatabaseWrapper) -> Iterator[None]:
        """Hold the write turn for `connection`'s database (SQLite, outside a transaction)."""
        lock, fd = self._line(connection)
        with lock:
            if fd is None:
                yield
                return
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)


writer_line = WriterLine()


class ForkGate:
    """Keeps fork() from copying a thread that is inside the database library.

    A pool's arbiter forks worker processes while its broker thread runs maintenance. Had the
    fork caught that thread inside SQLite, the child would inherit SQLite's global mutexes
    locked by a thread it does not have, and hang on its first connection. So every database
    call of the backend passes this gate, and a fork waits until none is under way.
    """

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(
            before=self._close, after_in_parent=self._open, after_in_child=self._reset
        )

    @contextmanager
    def passage(self) -> Iterator[None]:
        depth = getattr(self._local, "depth", 0)
        if depth == 0:  # reentrant: an operation may call another (maintain -> retry)
            with self._condition:
                while self._forking:
                    self._condition.wait()
                self._inside += 1
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth
            if depth == 0:
                with self._condition:
                    self._inside = max(0, self._inside - 1)
                    if not self._inside:
                        self._condition.notify_all()

    def _close(self) -> None:
        # Runs in the forking thread; the lock is held across fork() so nobody enters.
        self._condition.acquire()
        self._forking = True
        own = 1 if getattr(self._local, "depth", 0) else 0  # a fork from inside the gate
        while self._inside > own:
            self._condition.wait()

    def _open(self) -> None:
        self._forking = False
        self._condition.notify_all()
        self._condition.release()

    def _reset(self) -> None:
        # Also the child side of the fork: only the forking thread lives on, outside the gate.
        self._condition = threading.Condition()
        self._inside = 0
        self._forking = False
        self._local = threading.local()


fork_gate = ForkGate()


def worker_alias(database: str) -> str:
    """Register (once) and return the alias of the pool's own connections to `database`.

    Task code runs like a request: around each task, Django's close_old_connections() closes
    the connections past CONN_MAX_AGE (all of them, by default), and reconnecting for every
    acknowledgement would cost more than the task. This alias reaches the same database with
    CONN_MAX_AGE None, so it stays open, and is closed only once an error made it unusable.
    """
    alias = f"{database}:threadmill-worker"
    if alias not in connections.settings:
        entry = dict(connections.settings[database])
        entry["CONN_MAX_AGE"] = None
        # Under Django's test runner it points at the test database of `database`.
        entry["TEST"] = {**entry.get("TEST", {}), "MIRROR": database}
        connections.settings[alias] = entry
    return alias


def ready(connection: BaseDatabaseWrapper) -> BaseDatabaseWrapper:
    """Drop a connection an error broke (reconnecting on use), and set SQLite up once."""
    if not connection.in_atomic_block:
        if connection.connection is not None and connection.errors_occurred:
            connection.close_if_unusable_or_obsolete()
        prepare(connection)
    return connection


_wal_databases: set[str] = set()


def prepare(connection: BaseDatabaseWrapper) -> None:
    """Put a SQLite database in WAL mode, once per process (the mode is kept in the file)."""
    if connection.vendor != "sqlite" or connection.in_atomic_block:
        return
    name = str(connection.settings_dict["NAME"])
    if name in _wal_databases or connection.is_in_memory_db():
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode=WAL")
            mode = cursor.fetchone()[0]
    except OperationalError as error:  # switching needs a moment alone: try again next time
        logger.debug("SQLite database %s not switched to WAL yet: %s", name, error)
        return
    if mode != "wal":
        logger.warning("SQLite database %s stays in journal mode %s, not WAL", name, mode)
    _wal_databases.add(name)


class Interrupts:
    """The interrupt events of this process's workers, by worker id (see backend.interrupt)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, threading.Event] = {}

    def event(self, worker_id: str) -> threading.Event:
        with self._lock:
            event = self._events.get(worker_id)
            if event is None:
                event = self._events[worker_id] = threading.Event()
            return event

    @staticmethod
    def take(event: threading.Event | None) -> bool:
        """Consume an interrupt: True once per interrupt sent."""
        if event is None or not event.is_set():
            return False
        event.clear()
        return True


interrupts = Interrupts()


def wake_listeners(connection: BaseDatabaseWrapper) -> None:
    """Wake every LISTEN wait on the database (PostgreSQL; elsewhere waits are short slices)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_notify(%s, %s)", [CHANNEL, "!interrupt"])


class Waiter:
    """Sleeps until the database may hold news for an idle acquire."""

    def arm(self, wanted: set[str]) -> None:
        """Start watching for `wanted` ("<alias>/<queue>"); call before looking for tasks."""

    def wait(self, seconds: float, interrupted: threading.Event | None = None) -> None:
        """Return after `seconds`, or earlier when something may have changed or `interrupted`
        is set."""
        if interrupted is None:
            time.sleep(seconds)
        else:
            interrupted.wait(seconds)


class PollingWaiter(Waiter):
    """SQLite (and any other vendor): a poll that backs off, cheap on SQLite."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.interval = POLL_FIRST
        self.version: Any = None

    def arm(self, wanted: set[str]) -> None:
        self.interval = POLL_FIRST
        self.version = self._version()

    def wait(self, seconds: float, interrupted: threading.Event | None = None) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            if interrupted is None:
                time.sleep(min(self.interval, left))
            elif interrupted.wait(min(self.interval, left)):
                return
            self.interval = min(self.interval * 2, POLL_LONGEST)
            version = self._version()
            if version != self.version:
                self.version = version
                return

    def _version(self) -> Any:
        with fork_gate.passage():
            return self._read_version()

    def _read_version(self) -> Any:
        connection = connections[self.database]  # this thread's
        if connection.vendor != "sqlite":
            return None
        # data_version changes whenever another connection committed to the database.
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA data_version")
            return cursor.fetchone()[0]


class NotificationWaiter(Waiter):
    """PostgreSQL: LISTEN on a connection of its own, opened in the process that waits."""

    # Connections inherited across a fork share their socket with the parent: closing one in
    # the child would end the parent's session, so the child just keeps them from the GC.
    _inherited: list[Any] = []

    def __init__(self, database: str) -> None:
        self.database = database
        self.listener: Any = None
        self.pid = 0
        self.wanted: set[str] = set()

    def arm(self, wanted: set[str]) -> None:
        self.wanted = wanted
        try:
            if self.listener is None or self.listener.closed or self.pid != os.getpid():
                self._listen()
            # Old notifications say nothing about now: the caller looks at the table next.
            for _ in self.listener.notifies(timeout=0):
                pass
        except Exception as error:  # the caller falls back on a short sleep
            logger.warning("Cannot LISTEN for new tasks (%s); polling instead", error)
            self._drop()

    def wait(self, seconds: float, interrupted: threading.Event | None = None) -> None:
        if self.listener is None:
            super().wait(min(seconds, 1.0), interrupted)
            return
        try:
            for notify in self.listener.notifies(timeout=min(seconds, LONGEST_LISTEN)):
                if notify.payload in self.wanted or (interrupted and interrupted.is_set()):
                    return
        except Exception as error:
            logger.warning("Lost the LISTEN connection (%s)", error)
            self._drop()  # the next arm() opens a new one; the caller looks again meanwhile

    def _listen(self) -> None:
        import psycopg

        self._drop()
        params = connections[self.database].get_connection_params()
        listener = psycopg.connect(**params, autocommit=True)
        listener.execute(f"LISTEN {CHANNEL}")
        self.listener, self.pid = listener, os.getpid()

    def _drop(self) -> None:
        if self.listener is not None:
            if self.pid == os.getpid():
                with suppress(Exception):
                    self.listener.close()
            else:
                self._inherited.append(self.listener)
        self.listener = None


def waiter_for(database: str) -> Waiter:
    """A waiter for the database alias `database`; use it in one thread only."""
    if connections[database].vendor == "postgresql":
        return NotificationWaiter(database)
    return PollingWaiter(database)
