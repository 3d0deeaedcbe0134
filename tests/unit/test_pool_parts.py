"""The pure parts of the pool: how an exit is described, the control pipe, the scoreboard,
and the buffered log handler."""

import io
import logging
import os
import signal
import traceback

import pytest

from threadmill.pool.arbiter import describe_exit
from threadmill.pool.control import ControlReader, ControlWriter
from threadmill.pool.logs import BufferedStreamHandler
from threadmill.pool.scoreboard import FINISHED, OUTCOME_SIZE, STARTED, Scoreboard


def test_an_exit_is_described_by_its_signal_name_or_its_exit_code():
    assert describe_exit(signal.SIGKILL) == "was killed by SIGKILL"
    assert describe_exit(signal.SIGSEGV) == "was killed by SIGSEGV"
    assert describe_exit(7 << 8) == "exited with code 7"


def test_control_messages_arrive_whole_even_when_split_across_reads():
    read_fd, write_fd = os.pipe()
    writer, reader = ControlWriter(write_fd), ControlReader(read_fd)
    writer.send(boot_error="x" * 20_000)  # longer than one atomic pipe write
    writer.send(long_id="id-1", slot=3)
    messages = []
    while len(messages) < 2:
        messages.extend(reader.read())
    assert messages[0]["boot_error"] == "x" * 20_000
    assert messages[1] == {"long_id": "id-1", "slot": 3}
    os.close(write_fd)
    assert list(reader.read()) == []
    assert reader.closed
    reader.close()


def test_a_writer_whose_reader_is_gone_marks_itself_broken_instead_of_raising():
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    writer = ControlWriter(write_fd)
    writer.send(retiring=True)
    assert writer.broken
    os.close(write_fd)


def in_a_child(work) -> None:
    """Run `work` in a forked child, as a worker process would; fail if it failed there."""
    pid = os.fork()
    if pid == 0:
        try:
            work()
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the worker's side failed (see stderr)"


# The fork's child only writes to the shared memory and leaves with os._exit.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")
def test_the_scoreboard_shows_the_arbiter_started_tasks_until_they_are_freed_across_a_fork():
    board = Scoreboard(3)

    def worker_side():
        board.start(0, "task-a", 1.5, 100.0)
        board.start(2, "task-b", 2.0, 200.0)
        board.finish(2)
        board.start(1, "task-c", 3.0, 300.0)
        board.free(1)
        board.tick()

    in_a_child(worker_side)
    started = {task.task_id: task for task in board.started(final=True)}
    assert set(started) == {"task-a", "task-b"}
    assert (started["task-a"].state, started["task-a"].timeout) == (STARTED, 1.5)
    assert (started["task-b"].state, started["task-b"].deadline) == (FINISHED, 200.0)
    assert board.progress() == 1
    board.close()


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")
def test_an_outcome_held_in_the_scoreboard_outlives_the_worker_until_its_slot_is_reused():
    board = Scoreboard(3)

    def worker_side():
        for slot, task_id in enumerate(["held", "freed", "restarted"]):
            board.start(slot, task_id, 1.0, 10.0)
            board.finish(slot)
            assert board.hold(slot, f'{{"task":"{task_id}"}}'.encode())
        assert not board.hold(0, b"x" * (OUTCOME_SIZE + 1))  # too big: published at once
        board.free(1)
        board.start(2, "restarted", 1.0, 10.0)

    in_a_child(worker_side)
    started = {task.task_id: task for task in board.started(final=True)}
    assert started["held"].outcome == b'{"task":"held"}'
    assert "freed" not in started
    assert started["restarted"].outcome is None  # a new start drops the old outcome
    board.close()


def test_a_task_id_too_long_for_its_slot_is_left_to_the_control_pipe():
    board = Scoreboard(1)
    assert not board.start(0, "x" * 1000, 1.0, 10.0)
    (task,) = board.started()
    assert task.task_id is None
    assert task.slot == 0
    board.close()


def test_buffered_log_lines_are_written_when_flushed_and_at_once_from_warning_on():
    stream = io.StringIO()
    handler = BufferedStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("tests.buffered")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        logger.info("one")
        logger.info("two")
        assert stream.getvalue() == ""
        handler.flush()
        assert stream.getvalue() == "INFO one\nINFO two\n"
        logger.info("three")
        logger.warning("four")  # with what waited before it, in order
        assert stream.getvalue().endswith("INFO three\nWARNING four\n")
    finally:
        logger.removeHandler(handler)
        handler.close()
