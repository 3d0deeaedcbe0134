"""Finding and killing the processes of a pool, as the tests and the chaos run do."""

import contextlib
import os
import signal
from pathlib import Path


def children(parent: int) -> set[int]:
    """Live (not zombie) child processes of `parent`."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after its closing one.
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == parent and fields[0] != "Z":
            pids.add(int(entry.name))
    return pids


def kill(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
