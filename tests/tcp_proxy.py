"""A TCP proxy on loopback that a test can cut, slow down and restore, to fake network faults."""

import contextlib
import socket
import threading
import time

from tests.servers import free_port


class TcpProxy:
    """Forwards 127.0.0.1:<port> to a target; `cut()` drops every connection until `restore()`.

    `cut(silent=True)` keeps connections open but forwards nothing (a pulled cable: the peer
    hears nothing, not even a reset); `cut()` resets them (a crashed router).
    `mute_replies()` drops what the target sends on the connections open now, and only on
    them: their requests still reach it, their replies are lost.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.delay = 0.0
        self._state = "open"  # "open", "reset" or "silent"
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._upstreams: set[socket.socket] = set()  # the target's side of each connection
        self._muted: set[socket.socket] = set()  # upstreams whose bytes are dropped
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def cut(self, silent: bool = False) -> None:
        with self._lock:
            self._state = "silent" if silent else "reset"
            if not silent:
                self._close_all()

    def mute_replies(self) -> None:
        with self._lock:
            self._muted = set(self._upstreams)

    def restore(self) -> None:
        with self._lock:
            if self._state == "silent" or self._muted:
                self._close_all()  # what was held back is gone, as after a real outage
            self._state = "open"

    def stop(self) -> None:
        self._stopped = True
        self._listener.close()
        with self._lock:
            self._close_all()

    def _close_all(self) -> None:
        for sock in self._sockets:
            _close(sock, reset=True)
        self._sockets.clear()
        self._upstreams.clear()
        self._muted.clear()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                state = self._state
            if state == "reset":
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets.update((client, upstream))
                self._upstreams.add(upstream)
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                while self._state == "silent" and not self._stopped:
                    time.sleep(0.01)  # hold the bytes back, as a dead link would
                if self._state == "reset" or source not in self._sockets:
                    break
                if source in self._muted:
                    continue  # a lost reply
                if self.delay:
                    time.sleep(self.delay)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            # Under the lock: _close_all must not shut down a socket number that a close here
            # has just freed for a new connection.
            with self._lock:
                for sock in (source, sink):
                    _close(sock)


def _close(sock: socket.socket, reset: bool = False) -> None:
    """Close a socket so that its peer hears of it at once: with a reset (`reset`), else with
    an end of stream.

    Shut down first: a close alone leaves the socket open while the other pump thread of its
    connection is blocked reading it, and the peer would wait for a reply for ever.
    """
    with contextlib.suppress(OSError):
        if reset:
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
            )
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
