"""The pure parts of the pool: how an exit is described, and the control pipe."""

import os
import signal

from threadmill.pool.arbiter import describe_exit
from threadmill.pool.control import ControlReader, ControlWriter


def test_an_exit_is_described_by_its_signal_name_or_its_exit_code():
    assert describe_exit(signal.SIGKILL) == "was killed by SIGKILL"
    assert describe_exit(signal.SIGSEGV) == "was killed by SIGSEGV"
    assert describe_exit(7 << 8) == "exited with code 7"


def test_control_messages_arrive_whole_even_when_split_across_reads():
    read_fd, write_fd = os.pipe()
    writer, reader = ControlWriter(write_fd), ControlReader(read_fd)
    writer.send(leased=[f"id-{n}" for n in range(2000)])  # longer than one pipe write
    writer.send(started="id-1", timeout=1.5)
    messages = []
    while len(messages) < 2:
        messages.extend(reader.read())
    assert messages[0]["leased"][-1] == "id-1999"
    assert messages[1] == {"started": "id-1", "timeout": 1.5}
    os.close(write_fd)
    assert list(reader.read()) == []
    assert reader.closed
    reader.close()


def test_a_writer_whose_reader_is_gone_marks_itself_broken_instead_of_raising():
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    writer = ControlWriter(write_fd)
    writer.send(heartbeat=True)
    assert writer.broken
    os.close(write_fd)
