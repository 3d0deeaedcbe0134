"""The client side of one peer, run with that peer's own Python: enqueue, measure latency.

    python bench/agent.py MODULE enqueue KIND N TOTAL   -> {"seconds": ...}
    python bench/agent.py MODULE latency M              -> {"latencies": [...]}
    python bench/agent.py MODULE work                   (RQ: run a worker)

MODULE is a module of bench/peers (e.g. peers.huey_peer). Prints one JSON line.
"""

import importlib
import json
import random
import sys
import time

import bench_common


def main(argv: list[str]) -> None:
    peer = importlib.import_module(argv[0])
    if hasattr(peer, "setup"):
        peer.setup()
    command = argv[1]
    if command == "work":
        peer.work()
        return
    if command == "enqueue":
        kind, count, total = argv[2], int(argv[3]), int(argv[4])
        # The first call pays for connecting and for the library's lazy set-up: not timed.
        peer.enqueue(kind, total, time.time())
        started = time.perf_counter()
        for _ in range(count - 1):
            peer.enqueue(kind, total, time.time())
        seconds = time.perf_counter() - started
        print(json.dumps({"seconds": seconds, "rate": (count - 1) / seconds if count > 1 else 0}))
        return
    if command == "latency":
        print(json.dumps({"latencies": latencies(peer, int(argv[2]))}))
        return
    raise SystemExit(f"unknown command {command!r}")


def latencies(peer, count: int) -> list[float]:
    """Enqueue tasks one at a time into an idle pool; each reports enqueue -> start itself."""
    r = bench_common.client()
    found = []
    for _ in range(count):
        # An idle gap long enough for every peer's fetcher to go back to its idle wait.
        time.sleep(random.uniform(0.05, 0.15))
        peer.enqueue("latency", 0, time.time())
        reply = r.blpop([bench_common.LATENCY], timeout=30)
        if reply is None:
            raise SystemExit("a latency task did not start within 30 s")
        found.append(float(reply[1]))
    return found


if __name__ == "__main__":
    main(sys.argv[1:])
