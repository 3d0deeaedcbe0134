"""Profile threadmill's no-op drain: where a worker process spends its time, per task.

    uv run python bench/worker_profile.py                     # 20,000 tasks, 1 process, 1 thread
    uv run python bench/worker_profile.py --tasks 5000 --threads 4 --peer 'threadmill database'

Two drains on a fresh Redis each. The first counts what the pool sends to Redis per task
(MONITOR: commands and Lua scripts, by name). The second samples the worker process with
py-spy (installed in bench/.envs/profile, not in the project) and prints the functions that
take the most time, as microseconds per task: `self` is time in the function's own code,
`total` includes what it calls. Only busy threads are sampled (idle waits are not counted).
"""

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import bench_common  # noqa: E402
import run  # noqa: E402


def children(pid: int) -> list[int]:
    return [child for child, fields in run.processes() if int(fields[1]) == pid]


def drain(peer: run.Peer, tasks: int, threads: int, during) -> dict:
    """Pre-enqueue, start the pool, call `during(server, worker_pid)` while it drains; return
    the drain's seconds and the CPU seconds of the arbiter, the worker process and Redis."""
    with run.Redis() as server, tempfile.TemporaryDirectory() as tmp:
        env = run.environment(server.url, str(Path(tmp) / "db.sqlite3") if peer.sqlite else "")
        if peer.sqlite:
            run.migrate(peer, env)
        run.agent(peer, env, "enqueue", "noop", tasks, tasks)
        worker_env = {**env, "DJANGO_SETTINGS_MODULE": peer.settings}
        log = Path(tmp) / "worker.log"
        worker = run.Worker(peer.worker(1, threads), worker_env, log)
        try:
            deadline = time.monotonic() + 30
            while not (pids := children(worker.sid)) and time.monotonic() < deadline:
                time.sleep(0.01)
            stop = during(server, pids[0])
            run.wait_done(server.client, 1, 60, worker)
            who = {
                "arbiter": worker.sid,
                "worker process": pids[0],
                "redis-server": server.process.pid,
            }
            before = {name: run.cpu_seconds(pid) for name, pid in who.items()}
            done_before = int(server.client.get(bench_common.DONE))
            started = time.monotonic()
            run.wait_done(server.client, tasks, 600, worker)
            seconds = time.monotonic() - started
            after = {name: run.cpu_seconds(pid) for name, pid in who.items()}
            stop()
            counted = tasks - done_before
            return {
                "seconds": seconds,
                "tasks": counted,
                "cpu_us": {name: (after[name] - before[name]) / counted * 1e6 for name in who},
            }
        finally:
            worker.stop()


def print_cpu(result: dict) -> None:
    print(
        f"  {result['tasks'] / result['seconds']:,.0f} tasks/s; CPU per task: "
        + ", ".join(f"{name} {us:,.0f} µs" for name, us in result["cpu_us"].items())
    )


def count_commands(tasks: int, peer: run.Peer, threads: int) -> None:
    sent: collections.Counter = collections.Counter()

    def during(server, pid):
        halt = threading.Event()

        def monitor():
            import socket

            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                sock.sendall(b"MONITOR\r\n")
                sock.settimeout(0.2)
                buffer = b""
                while not halt.is_set():
                    try:
                        data = sock.recv(1 << 16)
                    except TimeoutError:
                        continue
                    buffer += data
                    *lines, buffer = buffer.split(b"\r\n")
                    for line in lines:
                        if b"[" not in line or b" lua]" in line:
                            continue
                        parts = line.split(b'"')
                        if len(parts) < 2:
                            continue
                        name = parts[1].decode().lower()
                        if name == "evalsha" and len(parts) > 3:
                            name = f"evalsha {parts[3].decode()[:8]}"
                        sent[name] += 1

        thread = threading.Thread(target=monitor, daemon=True)
        thread.start()

        def stop():
            halt.set()
            thread.join(2)

        return stop

    result = drain(peer, tasks, threads, during)
    print("\nDrain under MONITOR (slower):")
    print_cpu(result)
    names = _script_names()
    print(f"\nRedis commands sent per task ({tasks} tasks, MONITOR; the task's own INCR too):")
    for name, count in sent.most_common(12):
        label = name
        if name.startswith("evalsha "):
            label = f"EVALSHA {names.get(name.split()[1], name.split()[1])}"
        print(f"  {count / tasks:8.3f}  {label}")
    print(f"  {sum(sent.values()) / tasks:8.3f}  in all")


def _script_names() -> dict[str, str]:
    """Short SHA1 of each Lua script of the Redis backend -> its file name."""
    import hashlib

    lua = BENCH.parent / "threadmill" / "backends" / "lua"
    return {
        hashlib.sha1(path.read_bytes()).hexdigest()[:8]: path.stem for path in lua.glob("*.lua")
    }


def syscalls(tasks: int, peer: run.Peer, threads: int) -> None:
    """Count the system calls of the worker process and of the arbiter, per task (strace)."""
    if not shutil.which("strace"):
        print("\n(strace is not installed: no system call counts)")
        return
    folder = Path(tempfile.mkdtemp())
    tracers = []

    def during(server, pid):
        arbiter = os.getpgid(pid)
        for name, target in (("worker process", pid), ("arbiter", arbiter)):
            out = folder / f"{target}.txt"
            tracers.append((name, out, subprocess.Popen(
                ["strace", "-c", "-f", "-q", "-p", str(target), "-o", str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )))  # fmt: skip
        time.sleep(0.5)

        def stop():
            for _, _, tracer in tracers:
                tracer.send_signal(2)
                tracer.wait(30)

        return stop

    result = drain(peer, tasks, threads, during)
    print("\nSystem calls per task (strace -c, slows the drain):")
    for name, out, _ in tracers:
        counts = []
        for line in out.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
                calls = int(fields[3])
                counts.append((calls, fields[-1]))
        counts.sort(reverse=True)
        text = ", ".join(f"{calls / result['tasks']:.2f} {call}" for calls, call in counts[:8])
        print(f"  {name}: {sum(c for c, _ in counts) / result['tasks']:.1f} in all: {text}")


def plain(tasks: int, peer: run.Peer, threads: int) -> None:
    print("\nDrain, nothing attached:")
    print_cpu(drain(peer, tasks, threads, lambda server, pid: lambda: None))


def profile(tasks: int, peer: run.Peer, threads: int, rate: int, gil: bool) -> None:
    spy_env = run.ensure_env("profile", run.TOOLS["profile"])
    spy = str(spy_env / "bin" / "py-spy")
    out = Path(tempfile.mkdtemp()) / "profile.txt"
    holder: dict = {}

    def during(server, pid):
        holder["process"] = subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
             "--nonblocking", "--threads", "--output", str(out), *(["--gil"] if gil else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        time.sleep(0.5)  # py-spy attaches

        def stop():
            holder["process"].send_signal(2)
            holder["process"].wait(30)

        return stop

    result = drain(peer, tasks, threads, during)
    seconds = result["seconds"]
    own: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    by_thread: collections.Counter = collections.Counter()
    samples = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        count = int(count)
        frames = stack.split(";")
        samples += count
        by_thread[_thread(frames)] += count
        functions = [_short(frame) for frame in frames[1:]]
        if functions:
            own[functions[-1]] += count
        for function in set(functions):
            inclusive[function] += count
    per_task = 1e6 / rate / tasks  # µs of one thread's time per sample, per task
    print(
        f"\npy-spy, {rate} samples/s, {'threads holding the GIL' if gil else 'busy threads'} "
        f"only: {samples} samples, drain {seconds:.1f} s ({tasks / seconds:,.0f} tasks/s)"
    )
    print("\nBusy time by thread, µs per task:")
    for name, count in by_thread.most_common():
        print(f"  {count * per_task:8.1f}  {name}")
    print("\nTop functions by own time, µs per task:")
    for name, count in own.most_common(25):
        print(f"  {count * per_task:8.1f}  {name}")
    print("\nTop functions by total time (with callees), µs per task:")
    for name, count in inclusive.most_common(45):
        print(f"  {count * per_task:8.1f}  {name}")
    print(f"\nraw py-spy output: {out}")


def _thread(frames: list[str]) -> str:
    for frame in frames:
        for role in ("_fetch", "_execute", "_serve"):
            if frame.startswith(f"WorkerProcess.{role} "):
                return role.strip("_")
    return frames[0]


def _short(frame: str) -> str:
    # "function (path/to/module.py:123)" -> "function (module.py:123)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    path, _, line = where.rpartition(":")
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if parts else path
    return f"{name} ({short}:{line})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--peer", default="threadmill", help="a threadmill row of bench/run.py")
    parser.add_argument("--skip-count", action="store_true", help="no MONITOR drain")
    parser.add_argument("--gil", action="store_true", help="sample only the GIL holder (CPU)")
    parser.add_argument("--threadmill-rev", metavar="REV", help="profile commit REV, e.g. HEAD")
    args = parser.parse_args()
    if args.threadmill_rev:
        run.SNAPSHOT, commit = run.snapshot(args.threadmill_rev, "threadmill-profiled")
        print(f"threadmill as of commit {commit[:10]}")
    peer = next(p for p in run.PEERS if p.name == args.peer and p.family == run.TM)
    plain(args.tasks, peer, args.threads)
    syscalls(args.tasks, peer, args.threads)
    if not args.skip_count:
        count_commands(args.tasks, peer, args.threads)
    profile(args.tasks, peer, args.threads, args.rate, args.gil)


if __name__ == "__main__":
    main()
