"""`--exit-empty` with a terminal attached draws a progress bar of the drain."""

import os
import pty
import re
import subprocess
import sys

from tests import pool_tasks
from tests.acceptance.conftest import ROOT
from tests.servers import environment


def test_exit_empty_on_a_terminal_draws_the_drain_and_exits_0(
    redis_server, key_prefix, backend, tmp_path
):
    for n in range(30):
        pool_tasks.add.enqueue(n, n)
    controller, terminal = pty.openpty()  # the pool's stderr is a terminal
    pool = subprocess.Popen(
        [sys.executable, "-m", "django", "threadmill", "--processes", "1", "--exit-empty"],
        cwd=ROOT,
        env=environment(
            DJANGO_SETTINGS_MODULE="tests.acceptance.settings",
            THREADMILL_TEST_REDIS_URL=redis_server.url,
            THREADMILL_TEST_KEY_PREFIX=key_prefix,
            THREADMILL_TEST_DB_DIR=str(tmp_path),
        ),
        stdout=subprocess.DEVNULL,
        stderr=terminal,
    )
    os.close(terminal)
    seen = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the pool closed its end: it exited
            break
        if not chunk:
            break
        seen += chunk
    os.close(controller)
    assert pool.wait(timeout=30) == 0
    text = seen.decode(errors="replace")
    assert "Draining [" in text
    # The bar ends full: all it saw to drain, drained (it may first look after a few ran).
    assert re.search(r"\] (\d+)/\1 tasks, 0 left", text), text
    assert backend.count_pending() == {"ready": 0, "scheduled": 0, "running": 0}
