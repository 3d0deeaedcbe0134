"""Run the chaos run from the command line: `uv run python bench/chaos.py --tasks 20000`."""

import argparse
import os
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--pools", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2, help="worker processes per pool")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker process")
    parser.add_argument("--event-interval", type=float, default=3.0)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.acceptance.settings")
    from tests.chaos import Plan, run
    from tests.servers import RedisServer

    redis = RedisServer(appendonly=True).start()
    key_prefix = f"chaos-{uuid.uuid4().hex[:8]}"
    os.environ["THREADMILL_TEST_REDIS_URL"] = redis.url
    os.environ["THREADMILL_TEST_KEY_PREFIX"] = key_prefix
    import django

    django.setup()
    plan = Plan(
        tasks=args.tasks,
        pools=args.pools,
        processes=args.processes,
        threads=args.threads,
        event_interval=args.event_interval,
    )
    try:
        with tempfile.TemporaryDirectory(prefix="threadmill-chaos-") as workdir:
            report = run(plan, redis, key_prefix, Path(workdir))
    finally:
        redis.stop()
    print()
    print(report.table())
    print(f"\n{len(report.events)} events in {report.seconds:.0f}s:")
    for event in sorted(set(report.events)):
        print(f"- {event} x{report.events.count(event)}")
    return 0 if report.lost == 0 and report.stuck == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
