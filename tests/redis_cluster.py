"""A real Redis Cluster of three masters on loopback, for the tests."""

import shutil
import socket
import subprocess

from tests.servers import RedisServer, wait_for


def cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and exists too."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + 10000 < 65536 and _is_free(port + 10000):
            return port


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class RedisCluster:
    """Three redis-server masters joined with `redis-cli --cluster create`."""

    def __init__(self, masters: int = 3) -> None:
        self.nodes = [
            RedisServer(
                "--cluster-enabled", "yes", "--cluster-node-timeout", "2000", port=cluster_port()
            )
            for _ in range(masters)
        ]  # fmt: skip
        for node in self.nodes:
            node.args += ["--cluster-config-file", str(node.dir / "nodes.conf")]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> "RedisCluster":
        for node in self.nodes:
            node.start()
        subprocess.run(
            [
                shutil.which("redis-cli") or "redis-cli",
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._ready, timeout=20, what="the cluster to be ready")
        return self

    def _ready(self) -> bool:
        return all("cluster_state:ok" in self._cli(node, "CLUSTER", "INFO") for node in self.nodes)

    def node_of_slot(self, slot: int) -> int:
        """The port of the master that serves `slot`."""
        for start, end, master, *_ in _slots(self._cli(self.nodes[0], "CLUSTER", "SLOTS")):
            if start <= slot <= end:
                return master
        raise LookupError(slot)

    def _cli(self, node: RedisServer, *command: str) -> str:
        result = subprocess.run(
            [shutil.which("redis-cli") or "redis-cli", "-p", str(node.port), *command],
            capture_output=True,
            text=True,
        )
        return result.stdout

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _slots(text: str) -> list[tuple[int, int, int]]:
    """Parse redis-cli's flat CLUSTER SLOTS output: start, end, ip, port, id per range."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    ranges = []
    i = 0
    while i + 3 < len(lines):
        start, end, _ip, port = lines[i : i + 4]
        ranges.append((int(start), int(end), int(port)))
        i += 5
    return ranges
