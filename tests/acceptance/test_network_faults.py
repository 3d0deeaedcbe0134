"""The pool behind a TCP proxy that cuts, stalls and slows its link to Redis."""

import signal
import time
from collections import defaultdict

from django.tasks import TaskResultStatus

from tests import pool_tasks
from tests.acceptance.settings import POOL_OPTIONS
from tests.chaos import ChaosPool, pool_environment
from tests.chaos_tasks import timed
from tests.conftest import redis_tasks_setting_for
from tests.servers import wait_for
from tests.tcp_proxy import TcpProxy
from threadmill.pool.config import HOLD_LIMIT


def wait_drained(backend, timeout: float) -> None:
    """Wait until no task is ready, scheduled or running."""
    wait_for(
        lambda: sum(backend.count_pending().values()) == 0,
        timeout=timeout,
        what="every task to finish",
    )


def _end(pool: ChaosPool, proxy: TcpProxy) -> None:
    """Kill a pool the test did not see stop, and close the proxy."""
    if pool.process.poll() is None:
        pool.die()
    proxy.stop()


def test_cuts_stalls_and_delays_lose_nothing_and_never_run_a_task_twice_at_once(
    redis_server, key_prefix, settings, tmp_path
):
    settings.TASKS = redis_tasks_setting_for(redis_server.url, key_prefix, **POOL_OPTIONS)
    from django.tasks import task_backends

    backend = task_backends["default"]
    proxy = TcpProxy(redis_server.port)
    log_path = tmp_path / "executions.log"
    env = pool_environment(proxy.url, key_prefix, tmp_path)
    ids = [timed.enqueue(0.03).id for _ in range(400)]  # about 3 s of work for 4 threads
    pool = ChaosPool(0, ["--processes", "2", "--threads", "2"], env, tmp_path)
    try:
        wait_for(log_path.exists, timeout=30, what="the first task to start")
        for fault in ("reset", "silent", "slow"):
            if fault == "slow":
                proxy.delay = 0.05
            else:
                proxy.cut(silent=fault == "silent")
            time.sleep(1.5)  # the fault lasts this long: it is the test's input, not a wait
            proxy.delay = 0.0
            proxy.restore()
        wait_drained(backend, timeout=90)
    finally:
        pool.terminate()
        proxy.stop()

    statuses = {backend.get_result(task_id).status for task_id in ids}
    assert statuses == {TaskResultStatus.SUCCESSFUL}
    runs: dict[str, list[tuple[str, float]]] = defaultdict(list)
    for line in log_path.read_text().splitlines():
        kind, task_id, when = line.split()
        runs[task_id].append((kind, float(when)))
    assert set(runs) == set(ids)
    for task_id, events in runs.items():
        running = 0
        for kind, _ in sorted(events, key=lambda event: event[1]):
            running += 1 if kind == "S" else -1
            assert running <= 1, f"task {task_id} ran twice at the same time"


def test_a_worker_cut_off_from_redis_runs_only_as_far_as_it_can_hold_and_loses_nothing(
    redis_server, key_prefix, settings, tmp_path
):
    # Every task is leased in the first call, then the link goes down before any finishes.
    # Outcomes wait in the scoreboard, HOLD_LIMIT of them (the first task's among them); the
    # executor of the next quick task then waits to publish its outcome. So the first task
    # and HOLD_LIMIT quick tasks run, and nothing more until the link is back.
    settings.TASKS = redis_tasks_setting_for(redis_server.url, key_prefix, **POOL_OPTIONS)
    from django.tasks import task_backends

    backend = task_backends["default"]
    proxy = TcpProxy(redis_server.port)
    started, go, log = tmp_path / "started", tmp_path / "go", tmp_path / "runs.log"
    first = pool_tasks.touch_then_wait_for_file.enqueue(str(started), str(go))
    quick = [pool_tasks.note_run.enqueue(str(log), i) for i in range(HOLD_LIMIT + 20)]
    env = pool_environment(proxy.url, key_prefix, tmp_path)
    args = ["--processes", "1", "--threads", "1", "--prefetch", str(HOLD_LIMIT + 40)]
    pool = ChaosPool(0, args, env, tmp_path)

    def runs() -> list[str]:
        return log.read_text().split() if log.exists() else []

    try:
        # Started: so the worker has its lease call's reply, which holds the other tasks too.
        wait_for(started.exists, timeout=30, what="the first task to start")
        assert backend.count_pending()["running"] == 1 + len(quick)  # leased in one call
        proxy.cut()
        go.touch()
        wait_for(lambda: len(runs()) >= HOLD_LIMIT, timeout=30, what="the held outcomes")
        time.sleep(1.0)  # the outage lasts this long: it is the test's input, not a wait
        assert len(runs()) == HOLD_LIMIT
        proxy.restore()
        wait_drained(backend, timeout=60)
    finally:
        pool.terminate()
        proxy.stop()

    for result in [first, *quick]:
        assert backend.get_result(result.id).status == TaskResultStatus.SUCCESSFUL
    assert sorted(runs(), key=int) == [str(i) for i in range(len(quick))]  # each once


def test_a_sigterm_during_an_outage_stops_the_worker_gracefully_once_redis_is_back(
    redis_server, key_prefix, settings, tmp_path
):
    # Stopping interrupts the worker's wait for work with a Redis call. During a silent outage
    # that call hangs; the worker's main thread must go on beating meanwhile, or the arbiter
    # takes the worker for stuck and kills it, and the running task with it.
    settings.TASKS = redis_tasks_setting_for(redis_server.url, key_prefix, **POOL_OPTIONS)
    from django.tasks import task_backends

    backend = task_backends["default"]
    proxy = TcpProxy(redis_server.port)
    started, go = tmp_path / "started", tmp_path / "go"
    running = pool_tasks.touch_then_wait_for_file.enqueue(str(started), str(go))
    env = pool_environment(proxy.url, key_prefix, tmp_path)
    args = ["--processes", "1", "--threads", "1", "--heartbeat-timeout", "3"]
    pool = ChaosPool(0, args, env, tmp_path)
    try:
        wait_for(started.exists, timeout=30, what="the task to start")
        proxy.cut(silent=True)
        pool.process.send_signal(signal.SIGTERM)
        time.sleep(5.0)  # the outage outlasts --heartbeat-timeout: the test's input, not a wait
        proxy.restore()
        go.touch()
        code = pool.process.wait(timeout=60)
    finally:
        _end(pool, proxy)

    log = (tmp_path / "pool-0-1.log").read_text()
    assert code == 0, log
    assert "stuck" not in log
    assert backend.get_result(running.id).status == TaskResultStatus.SUCCESSFUL


def test_a_stop_whose_interrupt_is_lost_with_a_reply_still_ends_the_wait_for_work(
    redis_server, key_prefix, settings, tmp_path
):
    # An idle worker waits for work in BLPOP. A stop pushes an interrupt token, which that wait
    # takes; but its reply is lost on the failing link. The wait's call, sent again as a lease
    # alone, cannot tell, and waits for work once more: only another interrupt can end it.
    settings.TASKS = redis_tasks_setting_for(redis_server.url, key_prefix, **POOL_OPTIONS)
    from django.tasks import task_backends

    backend = task_backends["default"]
    proxy = TcpProxy(redis_server.port)
    env = pool_environment(proxy.url, key_prefix, tmp_path)
    blocked = backend.client.info("clients")["blocked_clients"]  # the server is shared
    args = ["--processes", "1", "--threads", "1", "--graceful-timeout", "60"]
    pool = ChaosPool(0, args, env, tmp_path)

    def waits() -> int:
        return backend.client.info("clients")["blocked_clients"] - blocked

    try:
        wait_for(lambda: waits() == 1, timeout=30, what="the idle worker to wait for work")
        proxy.mute_replies()  # the wait's link: what it sends arrives, its replies do not
        pool.process.send_signal(signal.SIGTERM)  # the interrupt goes on a new connection
        wait_for(lambda: waits() == 0, timeout=30, what="the wait to take the interrupt")
        proxy.restore()  # the wait's connection fails: its call is sent again
        stopped = time.monotonic()
        code = pool.process.wait(timeout=30)
        took = time.monotonic() - stopped
    finally:
        _end(pool, proxy)

    log = (tmp_path / "pool-0-1.log").read_text()
    assert code == 0, log
    assert "graceful-timeout" not in log, log  # stopped on its own, not killed
    assert took < 10, log
