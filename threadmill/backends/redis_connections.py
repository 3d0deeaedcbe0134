"""Redis connections kept open between calls: a call is one send, one read.

redis-py's client takes a connection from its pool for every command, checks its health and
gives it back; on a machine where system calls are dear that costs more than the round trip
itself (measured here: ~120 µs a PING through the client, ~30 µs on a held connection). The
backend's hot calls (enqueue, lease, wait, acknowledge) borrow a connection that no other
call uses meanwhile, and give it back as it is. So a process keeps as many connections as it
ever ran calls at once, not one per thread: a pool's threads take turns at leasing, and a web
server's threads enqueue now and then. Reconnecting, retrying with backoff and parsing stay
redis-py's.

Fork: a child must not use its parent's socket. A fork bumps `_generation` (in the child), and
a connection of an older generation is never lent; it is dropped without a word to the server
(redis-py only shuts a socket down in the process that opened it).
"""

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Any

from redis import Redis
from redis.connection import AbstractConnection
from redis.exceptions import NoScriptError, ResponseError
from redis.retry import Retry

try:
    from hiredis import pack_command as _hiredis_pack
except ImportError:  # redis-py packs in Python then
    _hiredis_pack = None

_generation = 0


def _forked() -> None:
    global _generation
    _generation += 1


os.register_at_fork(after_in_child=_forked)


class Script:
    """A Lua script of ours: its text, and its SHA1 once the server has told us."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha: str | None = None


class HeldConnections:
    """Connections to the server of `client`, each lent to one call at a time."""

    def __init__(self, client: Redis, retry: Retry) -> None:
        self._pool = client.connection_pool
        self._retry = retry
        # Connections no call uses now, with the fork generation they were opened in. A list's
        # append and pop are atomic: no lock that a fork could leave held.
        self._idle: list[tuple[AbstractConnection, int]] = []

    def call(self, *command: Any, timeout: float | None = None) -> Any:
        """Send one command and return its reply; a blocking command passes its `timeout`."""
        return self._with_retries(lambda connection: _round_trip(connection, [command], timeout)[0])

    def script(self, script: Script, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run a script (EVALSHA, loading it first when the server does not know it)."""
        return self.scripts(script, [(keys, args)])[0]

    def scripts(self, script: Script, calls: Sequence[tuple[Sequence[str], Sequence[Any]]]) -> list:
        """Run a script once per (keys, args), pipelined: one send and one read for all."""
        return self._with_retries(lambda connection: _evalsha(connection, script, calls))

    def wait_then_script(
        self, wait: Sequence[Any], script: Script, keys: Sequence[str], args: Sequence[Any]
    ) -> tuple[Any, Any]:
        """Send a blocking command and a script behind it in one write; return both replies
        (the wait's error reply as its exception: the script ran all the same).

        The server reads a blocked client's next command only once the blocking one returns,
        so the script runs the moment the wait ends, without a round trip back to us first.
        A retry (the connection failed) resends the script alone, and answers None for the
        wait: the wait may have ended already, and its wake-up been used, so waiting again
        could keep what the script took from the caller for a whole wait.
        """
        sent = False

        def attempt(connection: AbstractConnection) -> tuple[Any, Any]:
            nonlocal sent
            if sent:
                return None, _evalsha(connection, script, [(keys, args)])[0]
            sent = True
            if script.sha is None:
                script.sha = _load(connection, script)
            call = ("EVALSHA", script.sha, len(keys), *keys, *args)
            woken, reply = _send_and_read(connection, [wait, call], None)
            if isinstance(reply, NoScriptError):
                reply = _evalsha(connection, script, [(keys, args)])[0]
            elif isinstance(reply, ResponseError):
                raise reply
            return woken, reply

        return self._with_retries(attempt)

    def _with_retries(self, attempt: Callable[[AbstractConnection], Any]) -> Any:
        connection = self._borrow()

        def failed(error: Exception) -> None:
            connection.disconnect()  # the retry connects it again

        try:
            return self._retry.call_with_retry(lambda: attempt(connection), failed)
        except BaseException:
            # Cut short (an error not retried, or an exception raised in this thread, such as
            # a task's timeout), the call may have left a reply unread: the next call to use
            # the connection must start on a fresh one.
            connection.disconnect()
            raise
        finally:
            self._idle.append((connection, _generation))

    def _borrow(self) -> AbstractConnection:
        while True:
            try:
                connection, generation = self._idle.pop()
            except IndexError:
                return self._pool.make_connection()
            if generation == _generation:
                return connection


def _evalsha(
    connection: AbstractConnection,
    script: Script,
    calls: Sequence[tuple[Sequence[str], Sequence[Any]]],
) -> list:
    """Run a script once per (keys, args) in one round trip, loading it first when the server
    does not know it."""
    if script.sha is None:
        script.sha = _load(connection, script)
    commands = [("EVALSHA", script.sha, len(keys), *keys, *args) for keys, args in calls]
    try:
        return _round_trip(connection, commands, None)
    except NoScriptError:
        # The server forgot it (a restart, SCRIPT FLUSH): load and send again. Every script
        # of ours is safe to run twice, so a partly run batch may be resent.
        script.sha = _load(connection, script)
        return _round_trip(connection, commands, None)


def _load(connection: AbstractConnection, script: Script) -> str:
    return _round_trip(connection, [("SCRIPT", "LOAD", script.text)], None)[0]


def _round_trip(
    connection: AbstractConnection, commands: Sequence[Sequence[Any]], timeout: float | None
) -> list:
    """Send every command in one write, read every reply; raise the first error reply."""
    replies = _send_and_read(connection, commands, timeout)
    for reply in replies:
        if isinstance(reply, ResponseError):
            raise reply
    return replies


def _send_and_read(
    connection: AbstractConnection, commands: Sequence[Sequence[Any]], timeout: float | None
) -> list:
    """Send every command in one write, read every reply; an error reply is its exception."""
    packed = None
    if _hiredis_pack is not None:
        # Straight to hiredis: redis-py's packer walks every argument in Python first, which
        # costs more than the packing (ours are str, bytes and numbers, all hiredis takes; a
        # command's name is one word, redis-py would split "CLIENT SETNAME").
        with contextlib.suppress(TypeError):  # another type: redis-py's packer names it
            packed = [b"".join([_hiredis_pack(tuple(command)) for command in commands])]
    if packed is None:
        packed = connection.pack_commands(commands)
    connection.send_packed_command(packed, check_health=False)
    read: dict[str, Any] = {} if timeout is None else {"timeout": timeout}
    replies: list = []
    for _ in commands:
        try:
            replies.append(connection.read_response(**read))
        except ResponseError as error:
            # An error reply: read the others too, so the connection stays in step.
            replies.append(error)
    return replies
