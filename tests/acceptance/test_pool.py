"""`manage.py threadmill` as a subprocess, against a real Redis, with real signals and crashes."""

import contextlib
import json
import os
import re
import signal
import socket
import time

from django.tasks import TaskResultStatus

from tests import pool_tasks
from tests.servers import wait_for

WORKER_LOST = "threadmill.exceptions.WorkerLost"
TASK_TIMEOUT = "threadmill.exceptions.TaskTimeout"


def running_with_prefetch(backend, tmp_path, seconds: float, prefetch: int):
    """Enqueue a task that runs `seconds` and `prefetch` more; return once the first runs and
    the others are leased into the worker's buffer."""
    running = pool_tasks.touch_then_sleep.enqueue(str(tmp_path / "started"), seconds)
    prefetched = [pool_tasks.pid.enqueue() for _ in range(prefetch)]
    wait_for(lambda: (tmp_path / "started").exists(), what="the task to start")
    wait_for(
        lambda: all(backend.get_result(r.id).status == "RUNNING" for r in prefetched),
        what="the prefetch",
    )
    return running, prefetched


def test_a_pool_of_processes_and_threads_runs_sync_async_and_context_tasks(start_pool, finished):
    pool = start_pool("--processes", "2", "--threads", "2")
    workers = pool.booted_workers(2)
    adds = [pool_tasks.add.enqueue(i, 1) for i in range(10)]
    async_add = pool_tasks.async_add.enqueue(2, 3)
    whoami = pool_tasks.whoami.enqueue()

    assert [finished(r).return_value for r in adds] == [i + 1 for i in range(10)]
    assert finished(async_add).return_value == 5
    me = finished(whoami)
    assert me.return_value["attempt"] == 1
    assert me.return_value["pid"] in workers
    host, pid, thread = me.worker_ids[0].split(":")
    assert (host, int(pid), thread) == (socket.gethostname(), me.return_value["pid"], "fetcher")
    # Worker processes write their log lines on a timer (at most 0.2 s later), not per task.
    wait_for(
        lambda: re.search(
            rf"Task {whoami.id} tests.pool_tasks.whoami SUCCESSFUL in \d", pool.log()
        ),
        what="the task's log line",
    )


def test_task_of_a_killed_worker_fails_with_worker_lost_and_the_worker_is_replaced(
    start_pool, finished, backend, tmp_path
):
    pool = start_pool("--processes", "1", "--prefetch", "2")
    (old,) = pool.booted_workers(1)
    doomed, prefetched = running_with_prefetch(backend, tmp_path, seconds=30, prefetch=2)

    killed_at = time.monotonic()
    os.kill(old, signal.SIGKILL)
    lost = finished(doomed)
    assert time.monotonic() - killed_at < 5  # seconds, not the lease's hour
    assert lost.status == TaskResultStatus.FAILED
    assert lost.errors[-1].exception_class_path == WORKER_LOST
    assert f"worker process {old} was killed by SIGKILL" in lost.errors[-1].traceback
    # The prefetched tasks went back to the queue and ran in the replacement.
    (new,) = pool.booted_workers(1)
    assert new != old
    assert {finished(r).return_value for r in prefetched} == {new}
    assert all(finished(r).attempts == 1 for r in prefetched)


def test_the_prefetch_is_refilled_while_a_long_task_runs(start_pool, backend, tmp_path):
    # Both are leased in the first call; the long one starts, and the buffer must be topped
    # up at once, not when the long task ends.
    long_task = pool_tasks.touch_then_sleep.enqueue(str(tmp_path / "started"), 30)
    waiting = pool_tasks.pid.enqueue()
    pool = start_pool("--processes", "1", "--prefetch", "2")
    pool.booted_workers(1)
    wait_for(lambda: (tmp_path / "started").exists(), what="the long task to start")
    later = pool_tasks.pid.enqueue()
    wait_for(
        lambda: backend.get_result(later.id).status == "RUNNING",
        what="the prefetch to be refilled",
    )
    assert backend.get_result(waiting.id).status == "RUNNING"
    assert backend.get_result(long_task.id).status == "RUNNING"


def test_task_that_segfaults_fails_with_worker_lost_naming_sigsegv(start_pool, finished):
    pool = start_pool("--processes", "1")
    (old,) = pool.booted_workers(1)
    crash = pool_tasks.segfault.enqueue()
    after = pool_tasks.pid.enqueue()

    result = finished(crash)
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[-1].exception_class_path == WORKER_LOST
    assert f"worker process {old} was killed by SIGSEGV" in result.errors[-1].traceback
    assert finished(after).return_value not in (None, old)


def test_tasks_finished_before_a_crash_keep_their_results_and_are_not_run_again(
    start_pool, finished, tmp_path
):
    # Queued before the pool starts, the short tasks run back to back and their outcomes are
    # held, to be published many at once; the crash comes first (more tasks wait behind it,
    # so nothing tells the publisher to hurry). The arbiter must publish the held outcomes
    # from the dead worker's scoreboard: neither fail the tasks nor run them again.
    log = tmp_path / "runs.log"
    before = [pool_tasks.note_run.enqueue(str(log), i) for i in range(5)]
    crash = pool_tasks.segfault.enqueue()
    after = [pool_tasks.note_run.enqueue(str(log), i) for i in range(5, 10)]
    pool = start_pool("--processes", "1", "--prefetch", "16")

    assert finished(crash).errors[-1].exception_class_path == WORKER_LOST
    (old,) = {finished(r).return_value for r in before}
    for result in before + after:
        result = finished(result)
        assert result.status == TaskResultStatus.SUCCESSFUL
        assert result.attempts == 1
    assert sorted(log.read_text().split(), key=int) == [str(i) for i in range(10)]  # once each
    assert f"published for worker process {old}, which was killed by SIGSEGV" in pool.log()


def test_outcomes_too_big_to_hold_are_published_before_the_next_task_runs(start_pool, finished):
    # ~4 KB of return value does not fit in a scoreboard slot: the executor must wait for
    # each to be published before it runs the next task, or the crash would lose them.
    big = [pool_tasks.big_value.enqueue(4000, i) for i in range(3)]
    crash = pool_tasks.segfault.enqueue()
    start_pool("--processes", "1", "--prefetch", "16")

    assert finished(crash).errors[-1].exception_class_path == WORKER_LOST
    for i, result in enumerate(big):
        result = finished(result)
        assert result.status == TaskResultStatus.SUCCESSFUL
        assert result.return_value == str(i) * 4000
        assert result.attempts == 1


def test_a_short_task_is_published_while_the_long_one_after_it_runs(start_pool, backend, tmp_path):
    short = pool_tasks.pid.enqueue()
    long_task = pool_tasks.touch_then_sleep.enqueue(str(tmp_path / "started"), 30)
    start_pool("--processes", "1", "--prefetch", "2")
    wait_for(lambda: (tmp_path / "started").exists(), what="the long task to start")
    wait_for(
        lambda: backend.get_result(short.id).status == TaskResultStatus.SUCCESSFUL,
        timeout=2,
        what="the short task's result, held no longer than a moment",
    )
    assert backend.get_result(long_task.id).status == TaskResultStatus.RUNNING


def test_task_that_calls_os_exit_fails_with_worker_lost_naming_its_exit_code(start_pool, finished):
    pool = start_pool("--processes", "1")
    (old,) = pool.booted_workers(1)
    result = finished(pool_tasks.hard_exit.enqueue(7))
    assert result.errors[-1].exception_class_path == WORKER_LOST
    assert f"worker process {old} exited with code 7" in result.errors[-1].traceback
    assert finished(pool_tasks.pid.enqueue()).return_value != old


def test_task_that_spins_forever_fails_with_task_timeout_and_its_worker_lives_on(
    start_pool, finished
):
    pool = start_pool("--processes", "1", "--threads", "2")
    (worker,) = pool.booted_workers(1)
    spinners = [pool_tasks.spin_forever.enqueue(), pool_tasks.spin_swallowing_exceptions.enqueue()]
    for spinner in spinners:
        result = finished(spinner)
        assert result.status == TaskResultStatus.FAILED
        assert result.errors[-1].exception_class_path == TASK_TIMEOUT
        assert "ran past its timeout of 1 seconds" in result.errors[-1].traceback
        assert "while True" in result.errors[-1].traceback  # where it was stopped
    assert finished(pool_tasks.pid.enqueue()).return_value == worker


def test_task_stuck_in_c_past_its_timeout_is_killed_and_an_innocent_task_is_released(
    start_pool, finished, tmp_path
):
    pool = start_pool("--processes", "1", "--threads", "2", "--prefetch", "0")
    (old,) = pool.booted_workers(1)
    innocent = pool_tasks.touch_then_sleep.enqueue(str(tmp_path / "innocent"), 4)
    wait_for(lambda: (tmp_path / "innocent").exists(), what="the innocent task to start")
    stuck = pool_tasks.stuck_in_c.enqueue(str(tmp_path / "stuck"))

    result = finished(stuck)
    assert result.errors[-1].exception_class_path == TASK_TIMEOUT
    assert "did not stop" in result.errors[-1].traceback
    assert f"worker process {old} was killed by SIGKILL" in result.errors[-1].traceback
    rerun = finished(innocent, timeout=20)
    assert rerun.status == TaskResultStatus.SUCCESSFUL
    assert rerun.return_value != old
    assert rerun.errors == []


def test_worker_holding_the_gil_is_found_by_its_heartbeat_and_killed(
    start_pool, finished, tmp_path
):
    pool = start_pool("--processes", "1", "--heartbeat-timeout", "2")
    (old,) = pool.booted_workers(1)
    result = finished(pool_tasks.hold_the_gil.enqueue(str(tmp_path / "held")))
    assert result.errors[-1].exception_class_path == WORKER_LOST
    assert "sent no heartbeat" in result.errors[-1].traceback
    assert finished(pool_tasks.pid.enqueue()).return_value != old


def test_sigterm_finishes_running_tasks_releases_prefetched_ones_and_exits_0(
    start_pool, finished, backend, tmp_path
):
    pool = start_pool("--processes", "1", "--prefetch", "3")
    pool.booted_workers(1)
    running, prefetched = running_with_prefetch(backend, tmp_path, seconds=1.5, prefetch=3)

    pool.send(signal.SIGTERM)
    assert pool.wait() == 0
    assert backend.get_result(running.id).status == TaskResultStatus.SUCCESSFUL
    for result in prefetched:
        released = backend.get_result(result.id)
        assert released.status == TaskResultStatus.READY
        assert released.worker_ids == []
    assert "released 3 unstarted tasks" in pool.log()


def test_second_sigterm_stops_at_once_and_the_cut_off_task_fails(
    start_pool, finished, backend, tmp_path
):
    pool = start_pool("--processes", "1")
    pool.booted_workers(1)
    cut_off = pool_tasks.touch_then_sleep.enqueue(str(tmp_path / "started"), 60)
    wait_for(lambda: (tmp_path / "started").exists(), what="the task to start")

    pool.send(signal.SIGTERM)
    wait_for(lambda: "stops because it received SIGTERM" in pool.log(), what="the stop")
    pool.send(signal.SIGTERM)
    assert pool.wait(timeout=10) == 0
    result = backend.get_result(cut_off.id)
    assert result.status == TaskResultStatus.FAILED
    assert result.errors[-1].exception_class_path == WORKER_LOST
    assert "stopped at once" in result.errors[-1].traceback


def test_graceful_timeout_passing_stops_at_once_and_nothing_stays_running(
    start_pool, backend, tmp_path
):
    pool = start_pool("--processes", "1", "--graceful-timeout", "1")
    pool.booted_workers(1)
    cut_off = pool_tasks.touch_then_sleep.enqueue(str(tmp_path / "started"), 60)
    wait_for(lambda: (tmp_path / "started").exists(), what="the task to start")

    stopped_at = time.monotonic()
    pool.send(signal.SIGTERM)
    assert pool.wait(timeout=10) == 0
    assert time.monotonic() - stopped_at < 5
    result = backend.get_result(cut_off.id)
    assert result.status == TaskResultStatus.FAILED
    assert "did not stop within --graceful-timeout" in result.errors[-1].traceback


def test_boot_time_import_error_backs_off_then_exits_non_zero_with_the_reason(start_pool):
    began = time.monotonic()
    pool = start_pool("--processes", "2", settings_module="tests.acceptance.broken_settings")
    code = pool.wait(timeout=30)
    log = pool.log()
    assert code == 3
    assert "a_dependency_that_is_not_installed" in log.split("failed to boot; the last reason")[-1]
    # It backed off (0.25 + 0.5 + 1 + 2 seconds), one process at a time, rather than spinning.
    delays = re.findall(r"failed to boot; trying again in ([\d.]+)s", log)
    assert delays == ["0.25", "0.25", "0.5", "1", "2"]  # two processes failed in the first round
    assert time.monotonic() - began > 3.75


def test_max_tasks_recycles_worker_processes_visible_as_new_pids(start_pool, finished):
    pool = start_pool("--processes", "1", "--max-tasks", "2", "--prefetch", "0")
    pool.booted_workers(1)
    pids = [finished(pool_tasks.pid.enqueue()).return_value for _ in range(6)]
    assert len(set(pids)) == 3
    assert all(pids.count(pid) == 2 for pid in pids)
    wait_for(lambda: "leased its --max-tasks; retiring" in pool.log(), what="the retiring line")


def test_a_worker_with_threads_and_a_prefetch_retires_on_its_own_after_max_tasks(
    start_pool, finished
):
    # Queued before the pool starts, so the first lease takes all 3 of the budget at once:
    # the process must run every one of them and then leave by itself (nobody signals a
    # retiring worker), with none of its threads left waiting for work.
    results = [pool_tasks.sleep_then_pid.enqueue(0.2) for _ in range(9)]
    pool = start_pool("--processes", "1", "--threads", "2", "--max-tasks", "3", "--prefetch", "4")
    pids = [finished(result).return_value for result in results]
    assert sorted(pids.count(pid) for pid in set(pids)) == [3, 3, 3]
    wait_for(lambda: not set(pids) & pool.workers(), what="the retired processes to exit")


def test_a_stopping_worker_gives_back_its_unstarted_tasks_while_a_long_task_runs(
    start_pool, backend, finished, tmp_path
):
    # Another pool can run them meanwhile: they must not wait for the longest task to end.
    started, go = tmp_path / "started", tmp_path / "go"
    long = pool_tasks.touch_then_wait_for_file.enqueue(str(started), str(go))
    pool = start_pool("--processes", "1", "--threads", "1", "--prefetch", "2")
    wait_for(started.exists, what="the long task to start")
    others = [pool_tasks.pid.enqueue() for _ in range(4)]
    wait_for(lambda: backend.count_pending()["running"] == 3, what="the prefetch to fill")
    pool.send(signal.SIGTERM)
    wait_for(lambda: backend.count_pending()["ready"] == 4, what="the prefetch to come back")
    assert backend.get_result(long.id).status == TaskResultStatus.RUNNING
    go.touch()
    assert pool.wait() == 0
    assert finished(long).status == TaskResultStatus.SUCCESSFUL
    assert {backend.get_result(r.id).status for r in others} == {TaskResultStatus.READY}


def test_max_memory_recycles_a_worker_after_the_task_that_passed_it(start_pool, finished):
    pool = start_pool("--processes", "1", "--max-memory", "120")
    (old,) = pool.booted_workers(1)
    assert finished(pool_tasks.hoard_memory.enqueue(150)).return_value == old
    assert finished(pool_tasks.pid.enqueue()).return_value != old
    wait_for(lambda: "passed --max-memory (120 MB)" in pool.log(), what="the recycling line")


def test_failing_task_is_retried_with_backoff_keeping_its_id(start_pool, finished, tmp_path):
    pool = start_pool("--processes", "1")
    pool.booted_workers(1)
    markers = tmp_path / "attempts"
    markers.mkdir()
    flaky = pool_tasks.flaky.enqueue(str(markers))
    crashing = pool_tasks.crash_with_retry.enqueue()

    result = finished(flaky)
    assert result.id == flaky.id
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == "third time lucky"
    assert result.attempts == 3
    assert [e.exception_class_path for e in result.errors] == ["builtins.ValueError"] * 2
    times = [float((markers / f"attempt-{n}").read_text()) for n in (1, 2, 3)]
    assert times[1] - times[0] >= 0.2  # base_delay
    assert times[2] - times[1] >= 0.4  # base_delay * factor

    # A crash is retried by the same policy: WorkerLost twice, then given up.
    lost = finished(crashing)
    assert lost.status == TaskResultStatus.FAILED
    assert [e.exception_class_path for e in lost.errors] == [WORKER_LOST] * 2
    assert lost.attempts == 2


def test_sigttin_adds_and_sigttou_removes_a_worker_process(start_pool):
    pool = start_pool("--processes", "1")
    (first,) = pool.booted_workers(1)
    pool.send(signal.SIGTTIN)
    assert first in pool.booted_workers(2)
    pool.send(signal.SIGTTOU)
    pool.send(signal.SIGTTOU)  # never below one process
    remaining = pool.booted_workers(1)
    assert first not in remaining  # the oldest goes first


def test_sighup_replaces_every_worker_process_gracefully(start_pool, finished, backend, tmp_path):
    pool = start_pool("--processes", "2")
    old = pool.booted_workers(2)
    running = pool_tasks.touch_then_sleep.enqueue(str(tmp_path / "started"), 1)
    wait_for(lambda: (tmp_path / "started").exists(), what="the task to start")

    pool.send(signal.SIGHUP)
    assert finished(running).return_value in old  # the old process finished its task
    new = wait_for(
        lambda: (pids := pool.booted_workers(2)).isdisjoint(old) and pids,
        what="new worker processes",
    )
    assert finished(pool_tasks.pid.enqueue()).return_value in new


def test_exit_empty_drains_the_queues_and_exits_0_logging_one_json_line_per_task(
    start_pool, backend
):
    results = [pool_tasks.add.enqueue(i, i) for i in range(20)]
    results.append(pool_tasks.add.using(queue_name="low").enqueue(1, 1))
    pool = start_pool("--processes", "2", "--exit-empty", "--log-format", "json")
    assert pool.wait(timeout=30) == 0
    assert all(backend.get_result(r.id).status == TaskResultStatus.SUCCESSFUL for r in results)
    lines = [json.loads(line) for line in pool.log().splitlines() if line.startswith("{")]
    ends = {line["task_id"]: line for line in lines if "task_id" in line}
    assert set(ends) == {r.id for r in results}
    assert {line["status"] for line in ends.values()} == {"SUCCESSFUL"}
    assert all(line["task_path"] == "tests.pool_tasks.add" for line in ends.values())


def test_badly_written_tasks_fail_and_their_worker_lives_on(start_pool, finished):
    pool = start_pool("--processes", "1")
    (worker,) = pool.booted_workers(1)
    expected = {
        pool_tasks.raise_system_exit: "builtins.SystemExit",
        pool_tasks.raise_keyboard_interrupt: "builtins.KeyboardInterrupt",
        pool_tasks.return_not_json: "threadmill.exceptions.InvalidReturnValue",
    }
    for task, error in expected.items():
        result = finished(task.enqueue())
        assert result.status == TaskResultStatus.FAILED
        assert result.errors[-1].exception_class_path == error
    not_json = finished(pool_tasks.return_not_json.enqueue())
    assert "not JSON serializable" in not_json.errors[-1].traceback
    assert finished(pool_tasks.pid.enqueue()).return_value == worker
    assert pool.workers() == {worker}


def test_a_worker_process_keeps_a_few_redis_connections_however_many_threads_it_runs(
    start_pool, finished, redis_server
):
    # The pool threads take turns at leasing; each would otherwise keep a connection of its
    # own, and a pool of many threads would use up the server's clients for nothing.
    pool = start_pool("--processes", "1", "--threads", "8", "--prefetch", "0")
    (worker,) = pool.booted_workers(1)
    results = [pool_tasks.sleep_then_pid.enqueue(0.01) for _ in range(300)]
    for result in results:
        finished(result, timeout=60)
    held = _connections_to(worker, redis_server.port)
    assert held <= 4


def _connections_to(pid: int, port: int) -> int:
    """TCP connections that process `pid` holds open to `port` on this machine."""
    sockets = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                sockets.add(target[len("socket:[") : -1])
    count = 0
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            established = fields[3] == "01"
            if established and int(fields[2].split(":")[1], 16) == port and fields[9] in sockets:
                count += 1
    return count
