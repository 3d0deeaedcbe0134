"""The control pipe from a worker process to its arbiter: one JSON object per line.

Only rare events cross it; what a worker runs, and its heartbeat, are on the scoreboard
(`scoreboard.py`), which costs no system call per task:

    {"booted": true}                       ready to lease
    {"boot_error": "traceback..."}         about to exit with WORKER_BOOT_ERROR
    {"long_id": "id", "slot": 3}           the id of the task started in that slot, too long
                                           for it; sent before the task's code runs
    {"retiring": true}                     stops leasing (recycling); spawn a replacement

Any line also counts as a heartbeat. The arbiter never writes: it talks to workers with signals.
"""

import errno
import json
import os
import threading
from collections.abc import Iterator
from typing import Any


class ControlWriter:
    """The worker's end: writes whole lines, from any thread."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        # Lines longer than PIPE_BUF are not written atomically by the kernel; the lock keeps
        # the lines of two threads from interleaving.
        self._lock = threading.Lock()
        self.broken = False

    def send(self, **message: Any) -> None:
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            if self.broken:
                return
            try:
                while data:
                    written = os.write(self.fd, data)
                    data = data[written:]
            except OSError as error:
                # The arbiter is gone (EPIPE): the worker notices through its parent pid.
                if error.errno not in (errno.EPIPE, errno.EBADF):
                    raise
                self.broken = True


class ControlReader:
    """The arbiter's end: a non-blocking pipe whose bytes are split into messages."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        self._buffer = b""
        self.closed = False

    def read(self) -> Iterator[dict[str, Any]]:
        """Yield every complete message available now; mark the reader closed at end of file."""
        while not self.closed:
            try:
                chunk = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                self.closed = True
                break
            self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            if line:
                yield json.loads(line)

    def close(self) -> None:
        self.closed = True
        os.close(self.fd)
