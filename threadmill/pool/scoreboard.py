"""Shared memory between a worker process and its arbiter: which tasks it started, and that it
still makes progress. Updating it costs no system call, so a task costs no pipe write.

The arbiter creates one scoreboard per worker process *before* forking it (an anonymous shared
`mmap`, which both sides of the fork then see), reads it while the worker lives (heartbeat,
deadlines) and once more after reaping it (what it had started), then closes it.

Layout: an 8-byte progress counter, then one *slot* per task the worker may have started and
not yet published at once (`PoolConfig.scoreboard_slots`). A slot belongs to one task from its
start until its outcome is published; the worker hands slots out and takes them back under its
own lock, so two threads never write one slot at the same time. A slot:

    sequence  u32   odd while the slot is being written (a seqlock)
    state     u8    FREE, STARTED (the task's code runs) or FINISHED (its outcome is on its way)
    length    u8    bytes of the task id stored, or LONG_ID: the id went over the control pipe
    held      u16   bytes of the outcome held here (0: none), see `hold`
    timeout   f64   seconds the task may run
    deadline  f64   time.monotonic() (one clock for every process) when that timeout passes
    task id   UTF-8, up to ID_SIZE bytes
    outcome   up to OUTCOME_SIZE bytes, from the 128th byte of the slot on

A worker may start its next task before the outcome of the last one is published, to publish
many in one round trip; it first *holds* that outcome here. If the worker dies meanwhile, the
arbiter publishes what is held (`threadmill.pool.held_outcomes`): the outcome outlives the process.

Ordering rules. The writer bumps `sequence` to odd, writes the fields, bumps it to even; the
reader reads `sequence`, the fields, `sequence` again, and reads again when they differ or were
odd, so it never acts on half of one task and half of the next. A slot is marked STARTED
before the task's code is called and FREE only after its outcome is published: a worker that
dies in between leaves the task STARTED or FINISHED, which the arbiter settles (WorkerLost,
TaskTimeout, or released when another task's timeout got the process killed); a task never
marked started is released with the rest of the worker's leases (`backend.release_pool`).
After the worker is reaped nothing writes any more, so the last read is exact.
"""

import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass

FREE, STARTED, FINISHED = 0, 1, 2

ID_SIZE = 104
LONG_ID = 255  # `length` of a slot whose task id did not fit: it was sent over the pipe

_PROGRESS = struct.Struct("=Q")
_SEQUENCE = struct.Struct("=I")
_FIELDS = struct.Struct(f"=BBHdd{ID_SIZE}s")  # the floats 8-byte aligned
_HELD = struct.Struct("=H")
_HELD_OFFSET = _SEQUENCE.size + 2  # after sequence, state and length
_OUTCOME_OFFSET = 128
_SLOT_SIZE = 1024
OUTCOME_SIZE = _SLOT_SIZE - _OUTCOME_OFFSET
_HEADER_SIZE = 8
assert _SEQUENCE.size + _FIELDS.size <= _OUTCOME_OFFSET


@dataclass(frozen=True, slots=True)
class StartedTask:
    """A task a worker process started and had not published the outcome of."""

    slot: int
    task_id: str | None  # None: sent over the control pipe (LONG_ID)
    state: int
    timeout: float
    deadline: float
    outcome: bytes | None = None  # held, not published (read only once the worker is reaped)


class Scoreboard:
    """One worker process's slots and progress counter, in memory shared with its arbiter."""

    def __init__(self, slots: int) -> None:
        # Arbiter side, before the fork: the child inherits the mapping, shared.
        self.slots = slots
        self._map = mmap.mmap(-1, _HEADER_SIZE + slots * _SLOT_SIZE)
        self._progress = 0
        self.closed = False

    # --- the worker's side ------------------------------------------------------------------

    def tick(self) -> None:
        """Count one more turn of the worker's main loop: its heartbeat."""
        self._progress += 1
        _PROGRESS.pack_into(self._map, 0, self._progress)

    def start(self, slot: int, task_id: str, timeout: float, deadline: float) -> bool:
        """Mark a task started; False if its id is too long for the slot (send it apart)."""
        encoded = task_id.encode()
        length = len(encoded) if len(encoded) <= ID_SIZE else LONG_ID
        self._write(slot, STARTED, length, timeout, deadline, encoded)
        return length != LONG_ID

    def finish(self, slot: int) -> None:
        """Mark a started task's code as done: its deadline no longer counts."""
        offset = _HEADER_SIZE + slot * _SLOT_SIZE
        sequence = _SEQUENCE.unpack_from(self._map, offset)[0]
        _SEQUENCE.pack_into(self._map, offset, sequence + 1)
        self._map[offset + _SEQUENCE.size] = FINISHED
        _SEQUENCE.pack_into(self._map, offset, sequence + 2)

    def hold(self, slot: int, outcome: bytes) -> bool:
        """Keep a finished task's encoded outcome, for the arbiter should the worker die before
        publishing it; False if it does not fit (publish it before running more tasks)."""
        if len(outcome) > OUTCOME_SIZE:
            return False
        offset = _HEADER_SIZE + slot * _SLOT_SIZE
        sequence = _SEQUENCE.unpack_from(self._map, offset)[0]
        _SEQUENCE.pack_into(self._map, offset, sequence + 1)
        start = offset + _OUTCOME_OFFSET
        self._map[start : start + len(outcome)] = outcome
        _HELD.pack_into(self._map, offset + _HELD_OFFSET, len(outcome))
        _SEQUENCE.pack_into(self._map, offset, sequence + 2)
        return True

    def free(self, slot: int) -> None:
        """Mark a slot free: its task's outcome is published."""
        self._write(slot, FREE, 0, 0.0, 0.0, b"")

    def _write(
        self, slot: int, state: int, length: int, timeout: float, deadline: float, task_id: bytes
    ) -> None:
        offset = _HEADER_SIZE + slot * _SLOT_SIZE
        sequence = _SEQUENCE.unpack_from(self._map, offset)[0]
        _SEQUENCE.pack_into(self._map, offset, sequence + 1)
        _FIELDS.pack_into(
            self._map, offset + _SEQUENCE.size, state, length, 0, timeout, deadline, task_id
        )
        _SEQUENCE.pack_into(self._map, offset, sequence + 2)

    # --- the arbiter's side -----------------------------------------------------------------

    def progress(self) -> int:
        return _PROGRESS.unpack_from(self._map, 0)[0]

    def started(self, final: bool = False) -> Iterator[StartedTask]:
        """Yield every task started and not yet published, each as one consistent reading.

        While the worker lives, a slot caught in the middle of a write (its thread may be
        descheduled there) is skipped this time. `final`: the worker is reaped, nothing writes
        any more, and a write it died in is read as it was left.
        """
        view = self._map
        for slot in range(self.slots):
            offset = _HEADER_SIZE + slot * _SLOT_SIZE
            if view[offset + _SEQUENCE.size] == FREE:
                continue  # a cheap look first; below it is read properly
            for _ in range(100):
                before = _SEQUENCE.unpack_from(view, offset)[0]
                state, length, held, timeout, deadline, raw = _FIELDS.unpack_from(
                    view, offset + _SEQUENCE.size
                )
                if before % 2 == 0 and _SEQUENCE.unpack_from(view, offset)[0] == before:
                    break
            else:
                if not final:
                    continue
            if state == FREE:
                continue
            task_id = None if length == LONG_ID else raw[:length].decode(errors="replace")
            outcome = None
            if final and state == FINISHED and 0 < held <= OUTCOME_SIZE:
                start = offset + _OUTCOME_OFFSET
                outcome = bytes(view[start : start + held])
            yield StartedTask(slot, task_id, state, timeout, deadline, outcome)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._map.close()
