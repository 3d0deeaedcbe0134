"""Turn one run's raw results (bench/results/*.json) into docs/benchmark.md.

python bench/report.py bench/results/<stamp>.json > docs/benchmark.md
"""

# ruff: noqa: RUF001 - the table and the chart print typographic signs on purpose

import json
import statistics
import sys

TM = "threadmill"


def derived(run: dict) -> None:
    """Add figures computed from others: the overhead in CPU rather than wall time."""
    burn = run.get("burn", {})
    if "task_cpu" in burn and "cpu_overhead_us" not in burn:
        burn["cpu_overhead_us"] = (burn["cpu_per_task"] - burn["task_cpu"] / burn["done"]) * 1e6


def values(peer: dict, section: str, name: str, scale: float = 1.0) -> list[float]:
    found = []
    for run in peer["runs"]:
        derived(run)
        value = run.get(section, {}).get(name)
        if value is not None:
            found.append(value * scale)
    return found


def summary(peer: dict, section: str, name: str, scale: float = 1.0) -> dict | None:
    found = values(peer, section, name, scale)
    if not found:
        return None
    partial = (
        section in ("noop", "burn")
        and name != "enqueue_rate"
        and not all(run.get(section, {}).get("complete", True) for run in peer["runs"])
    )
    return {
        "median": statistics.median(found),
        "min": min(found),
        "max": max(found),
        "n": len(found),
        "partial": partial,
    }


def number(value: float, digits: int) -> str:
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def cell(stat: dict | None, digits: int = 0) -> str:
    if stat is None:
        return "–"
    text = number(stat["median"], digits)
    if stat["n"] > 1:
        text += f" ({number(stat['min'], digits)}–{number(stat['max'], digits)})"
    if stat["partial"]:
        text += "†"
    return text


# Figure name -> (section, key, scale, digits, header, higher is better)
FIGURES = {
    "throughput": ("noop", "throughput", 1, 0, "no-op tasks/s", True),
    "cpu": ("noop", "cpu_per_task", 1e6, 0, "worker CPU µs/task", False),
    "p50": ("idle", "p50", 1e3, 2, "pickup p50 ms", False),
    "p95": ("idle", "p95", 1e3, 2, "pickup p95 ms", False),
    "p99": ("idle", "p99", 1e3, 2, "pickup p99 ms", False),
    "idle": ("idle", "idle_commands_per_s", 1, 2, "idle Redis commands/s", False),
    "overhead": ("burn", "overhead_us", 1, 0, "overhead µs/task (5 ms CPU, 2 processes)", False),
    "cpu_overhead": ("burn", "cpu_overhead_us", 1, 0, "overhead, CPU µs/task", False),
    "enqueue": ("noop", "enqueue_rate", 1, 0, "enqueue/s (1 thread)", True),
}


def stats(report: dict) -> dict[str, dict[str, dict | None]]:
    table = {
        name: {
            figure: summary(peer, section, key, scale)
            for figure, (section, key, scale, _, _, _) in FIGURES.items()
        }
        for name, peer in report["peers"].items()
    }
    for name, peer in report["peers"].items():
        if peer["family"] == "django-tasks-db":
            table[name]["idle"] = None  # it polls SQLite, not Redis: nothing to compare
    return table


def markdown(report: dict) -> str:
    table = stats(report)
    peers = report["peers"]
    machine = report["machine"]
    args = report["args"]
    lines = [
        "# Benchmark: threadmill and its peers",
        "",
        f"One run of `uv run python bench/run.py` ({args_text(args)}), {report['when']}, "
        f"{report['seconds'] / 60:.0f} minutes. Median of {args['runs']} runs, min–max in "
        "brackets; † = the drain hit `--drain-timeout` and shows the rate seen until then.",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, "
        f"{machine['os']}; Python {machine['python']}; redis-server {machine['redis_server']} "
        "(a fresh private server per measurement, `--save '' --appendonly no`). "
        "Driver, Redis and workers share the cores; load average "
        f"{machine['load_before'][0]:.1f} before the run, {machine.get('load_after', [0])[0]:.1f} "
        "after (other work on the machine shows here).",
        "",
        f"threadmill from the {report.get('threadmill_source', 'working tree')}. Versions: "
        + "; ".join(
            f"{family}: " + ", ".join(f"{k} {v}" for k, v in found.items())
            for family, found in report["versions"].items()
        )
        + ".",
        *postgres(report),
        "",
        "## Figures",
        "",
        "| peer | worker configuration | " + " | ".join(FIGURES[f][4] for f in FIGURES) + " |",
        "|---|---|" + "---:|" * len(FIGURES),
    ]
    for name, peer in peers.items():
        lines.append(
            f"| {name} | {peer['config']} | "
            + " | ".join(cell(table[name][f], FIGURES[f][3]) for f in FIGURES)
            + " |"
        )
    lines += ratios(table, peers)
    lines += targets(table, peers, report.get("calibration", {}), report["machine"]["cores"])
    lines += floors_section(report.get("calibration", {}))
    lines += database(table, peers)
    lines += method(report)
    return "\n".join(lines) + "\n"


def args_text(args: dict) -> str:
    return (
        f"--tasks {args['tasks']} --burn-tasks {args['burn_tasks']} "
        f"--latency-tasks {args['latency_tasks']} --idle-seconds {float(args['idle_seconds']):g} "
        f"--runs {args['runs']}"
        + (" --database postgres" if args.get("database") == "postgres" else "")
    )


def median(table, name, figure) -> float | None:
    stat = table.get(name, {}).get(figure)
    return None if stat is None else stat["median"]


def ratios(table, peers) -> list[str]:
    if TM not in table:
        return []
    others = [n for n, p in peers.items() if p["family"] != TM]
    if not others:
        return []
    lines = [
        "",
        "## threadmill against each peer",
        "",
        "How many times better threadmill is (above 1: threadmill wins), from the medians above.",
        "",
        "| peer | no-op throughput | worker CPU per task | pickup p50 | pickup p95 | "
        "idle commands | overhead | overhead, CPU | enqueue |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name in others:
        row = []
        for figure in (
            "throughput", "cpu", "p50", "p95", "idle", "overhead", "cpu_overhead", "enqueue",
        ):  # fmt: skip
            ours, theirs = median(table, TM, figure), median(table, name, figure)
            higher_better = FIGURES[figure][5]
            if ours is None or theirs is None:
                row.append("–")
            elif higher_better:
                row.append(f"{ours / theirs:.2f}×" if theirs else "–")
            elif theirs == 0:
                row.append("0 vs " + number(ours, FIGURES[figure][3]))
            elif ours <= 0:
                row.append("∞")
            else:
                row.append(f"{theirs / ours:.2f}×")
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return lines


def best(table, peers, figure, higher_better) -> tuple[str, float] | None:
    found = [
        (name, median(table, name, figure))
        for name, peer in peers.items()
        if peer["family"] != TM and median(table, name, figure) is not None
    ]
    if not found:
        return None
    return (max if higher_better else min)(found, key=lambda item: item[1])


def targets(table, peers, calibration: dict, cores: int) -> list[str]:
    """The targets of issue 5, each against what this machine allows any worker (the floors
    measured in the same run, bench/floors.py): a target past its floor is out of reach here."""
    if TM not in table:
        return []
    floors = calibration.get("floors", {})
    rows = []

    def add(goal: str, measured: str, met: bool | None, limit: str = "") -> None:
        verdict = "–" if met is None else ("yes" if met else "no")
        rows.append(f"| {goal} | {measured} | {verdict} | {limit or '–'} |")

    body, execute = floors.get("body"), floors.get("execute")
    queue = floors.get("queue_loop")
    ours = median(table, TM, "throughput")
    top = best(table, peers, "throughput", True)
    if ours and top:
        limit = ""
        if body and execute:
            needed, met = 3 * top[1], ours >= 3 * top[1]
            limit = (
                f"needs {needed:,.0f}/s; the task body alone, in a bare loop, runs "
                f"{body['rate']:,.0f}/s, and run as a Django task with no queue at all "
                f"{execute['rate']:,.0f}/s"
            )
            if queue:
                # A durable queue does all the least queue does and more; threads let one
                # process hide its waits, but Python runs on one core at a time, so the CPU
                # spent out of the kernel (holding the GIL) bounds the rate however many.
                threaded = [(n, figures["rate"]) for n, figures in threaded_queues(floors)]
                fastest = max([queue["rate"]] + [rate for _, rate in threaded])
                user = queue.get("user_us", queue["cpu_us"])
                where = " out of the kernel" if "user_us" in queue else ""
                limit += (
                    f"; {LEAST_QUEUE} drains {queue['rate']:,.0f}/s in one thread"
                    + "".join(f", {rate:,.0f}/s in {n}" for n, rate in threaded)
                    + (": out of reach" if needed > fastest and not met else "")
                    + f". Its CPU per task{where}, {user:,.0f} µs, would allow "
                    f"{1e6 / user:,.0f}/s if threads hid every wait for free"
                )
        add(
            "no-op throughput, 1 process ≥ 3× the best peer",
            f"{ours:,.0f}/s = {ours / top[1]:.2f}× {top[0]}",
            ours >= 3 * top[1],
            limit,
        )
    ours = median(table, TM, "cpu")
    top = best(table, peers, "cpu", False)
    if ours and top:
        limit = ""
        if body and execute:
            allowed = top[1] / 3
            floor = max(execute["cpu_us"], queue["cpu_us"]) if queue else execute["cpu_us"]
            limit = (
                f"allows {allowed:,.0f} µs; the body alone costs {body['cpu_us']:,.0f} µs, "
                f"run as a Django task {execute['cpu_us']:,.0f} µs"
                + (
                    f"; {LEAST_QUEUE}, in one thread, spends {queue['cpu_us']:,.0f} µs"
                    if queue
                    else ""
                )
                + (": out of reach" if allowed < floor and ours > allowed else "")
            )
        add(
            "worker CPU per task ≤ ⅓ of the best peer",
            f"{ours:,.0f} µs vs {top[1]:,.0f} µs ({top[0]})",
            ours <= top[1] / 3,
            limit,
        )
    p50, p95 = median(table, TM, "p50"), median(table, TM, "p95")
    wake, django_wake = floors.get("wake"), floors.get("django_wake")
    if p50 is not None:
        limit = ""
        if wake:
            limit = (
                f"a bare Redis wake-up of an idle process (RPUSH → BLPOP) takes "
                f"{wake['p50_ms']:.2f} ms"
            )
        if wake and django_wake:
            limit += f"; {LEAST_PICKUP} {django_wake['p50_ms']:.2f} ms" + (
                ": out of reach" if django_wake["p50_ms"] > 1.0 and p50 > 1.0 else ""
            )
        elif wake:
            limit += (
                "; a durable pickup adds Django's enqueue, the script that stores the task, "
                "and the lease script Redis runs before it answers the wake-up"
            )
        add("idle pickup p50 ≤ 1 ms", f"{p50:.2f} ms", p50 <= 1.0, limit)
    if p95 is not None:
        limit = f"the bare wake-up's p95: {wake['p95_ms']:.2f} ms" if wake else ""
        if wake and django_wake:
            limit += f"; the least Django pickup's: {django_wake['p95_ms']:.2f} ms"
        add("idle pickup p95 ≤ 2 ms", f"{p95:.2f} ms", p95 <= 2.0, limit)
    idle = median(table, TM, "idle")
    if idle is not None:
        add("idle pool ≤ 1 Redis command/s per process", f"{idle:.2f}/s", idle <= 1.0)
    overhead = median(table, TM, "overhead")
    if overhead is not None:
        limit = ""
        if "report_wall_us" in calibration:
            limit = (
                f"the task's own reporting round trip, counted in the figure, takes "
                f"{calibration['report_wall_us']:,.0f} µs alone"
                + (": out of reach" if calibration["report_wall_us"] > 50 else "")
            )
        met = overhead <= 50
        add("overhead on CPU-bound tasks ≤ 50 µs/task", f"{overhead:,.0f} µs", met, limit)
    ours = median(table, TM, "enqueue")
    top = best(table, peers, "enqueue", True)
    if ours and top:
        limit = ""
        enqueue, trip = floors.get("django_enqueue"), floors.get("round_trip")
        pushed = floors.get("push_enqueue")
        if pushed:
            needed = 1.5 * top[1]
            limit = (
                f"needs {needed:,.0f}/s; `Task.enqueue` on a backend that only pushes the "
                f"payload (one RPUSH: no id check, no status, nothing else stored) runs "
                f"{pushed['rate']:,.0f}/s"
                + (": out of reach" if needed > pushed["rate"] and ours < needed else "")
            )
        elif enqueue and trip:
            needed = 1.5 * top[1]
            ceiling = 1e6 / (1e6 / enqueue["rate"] + 1e6 / trip["rate"])
            left = 1e6 / needed - 1e6 / ceiling  # µs per enqueue beyond the two steps
            limit = (
                f"needs {needed:,.0f}/s; Django's enqueue on a backend that stores nothing "
                f"plus one Redis round trip allows {ceiling:,.0f}/s"
                + (
                    ": out of reach"
                    if left <= 0
                    else f", leaving {left:,.1f} µs per enqueue to encode the payload and "
                    "write it durably (several keys, in one script)"
                )
            )
        add(
            "enqueue from one thread ≥ 1.5× the best peer",
            f"{ours:,.0f}/s = {ours / top[1]:.2f}× {top[0]}",
            ours >= 1.5 * top[1],
            limit,
        )
    one, two = median(table, TM, "throughput"), median(table, f"{TM} ×2 processes", "throughput")
    if one and two:
        add(
            "2 processes ≥ 1.6× one process (no-op)",
            f"{two / one:.2f}×",
            two >= 1.6 * one,
            "; ".join(
                text
                for text in (
                    scaling_limit(peers.get(f"{TM} ×2 processes"), one, cores),
                    queue_scaling(floors.get("queue_scaling")),
                )
                if text
            ),
        )
    if not rows:
        return []
    return [
        "",
        "## Targets of issue 5",
        "",
        "The last column is what this machine allows any worker, measured in the same run "
        "without a durable task queue (`bench/floors.py`, before and after the peers, the "
        "better of the two): a target past it cannot be met here.",
        "",
        "| target | measured | met | the floor on this machine |",
        "|---|---|---|---|",
        *rows,
    ]


def threaded_queues(floors: dict) -> list[tuple[int, dict]]:
    """The least queue's figures with several threads, by thread count (bench/floors.py)."""
    return sorted(
        (int(name.split("_")[2]), figures)
        for name, figures in floors.items()
        if name.startswith("queue_loop_") and name.endswith("_threads")
    )


LEAST_QUEUE = (
    "the least a Redis queue does for Django tasks (one LPOP per 16 tasks, their results stored "
    "in one round trip, no lease, nothing durable)"
)
PICKUP_STEPS = (
    "(`Task.enqueue` pushing the payload, BLPOP, the TaskResult built and run as a Django task)"
)
LEAST_PICKUP = f"the least a Django worker on Redis does {PICKUP_STEPS} takes"


def queue_scaling(measured: dict | None) -> str:
    """How much a second process adds to the least queue, and how busy two keep the machine:
    information, not a floor (a worker that waits more per task leaves more room for a
    second one, so ratios are not comparable; idle time and Redis's share are)."""
    if not measured or "idle" not in measured:
        return ""
    return (
        f"for reference, {LEAST_QUEUE} drains {measured['one']:,.0f}/s in one process and "
        f"{measured['two']:,.0f}/s in two ({measured['ratio']:.2f}×), the machine "
        f"{measured['idle'] * 100:.0f}% idle and Redis spending {measured['redis_us']:,.0f} µs "
        "of CPU per task"
    )


def scaling_limit(two: dict | None, one: float, cores: int) -> str:
    """What bounds two processes, from their drain: the CPU that pool and Redis spend per
    task on these cores, and where the rest of the time went."""
    if two is None:
        return ""
    measured = {
        key: summary(two, "noop", key, scale)
        for key, scale in (
            ("cpu_per_task", 1e6),
            ("redis_cpu_per_task", 1e6),
            ("machine_idle", 100),
            ("cpu_pressure", 100),
        )
    }
    if any(measured[key] is None for key in ("cpu_per_task", "redis_cpu_per_task")):
        return ""
    cpu, redis_cpu = measured["cpu_per_task"]["median"], measured["redis_cpu_per_task"]["median"]
    ceiling = cores * 1e6 / (cpu + redis_cpu)
    text = (
        f"pool and Redis spend {cpu:,.0f} + {redis_cpu:,.0f} µs of CPU per task: {cores} busy "
        f"cores would allow {ceiling:,.0f}/s = {ceiling / one:.2f}× one process"
    )
    idle, pressure = measured["machine_idle"], measured["cpu_pressure"]
    if idle is not None and pressure is not None:
        text += (
            f". They are not kept busy: the machine stayed {idle['median']:.0f}% idle during "
            f"the drain, yet for {pressure['median']:.0f}% of it some thread that could run "
            "waited for a CPU"
        )
        if idle["median"] >= 10:
            text += (
                " (Redis runs one command at a time, so each task's INCR, from either process, "
                "waits while Redis runs the lease and acknowledgement scripts of a whole batch; "
                "meanwhile both processes may be waiting, and a core idles)"
            )
    return text


def floors_section(calibration: dict) -> list[str]:
    """What this machine allows any worker: bench/floors.py, measured in the same run."""
    floors = calibration.get("floors")
    if not floors:
        return []
    rows = [
        ("the task body alone (one INCR), in a bare loop", floors["body"]),
        ("the body run as a Django task (`threadmill.execution`), no queue at all",
         floors["execute"]),
        ("Django's enqueue on a backend that stores nothing", floors["django_enqueue"]),
        ("one Redis round trip (INCR, redis-py)", floors["round_trip"]),
    ]  # fmt: skip
    least = [
        ("`Task.enqueue` pushing its payload (one RPUSH, nothing else stored)",
         floors.get("push_enqueue")),
        ("no-op tasks drained by the least Redis queue (LPOP 16 at a time, run as Django "
         "tasks, results stored 16 to a round trip), one thread", floors.get("queue_loop")),
        *((f"the same, {threads} threads of one process", figures)
          for threads, figures in threaded_queues(floors)),
    ]  # fmt: skip
    rows += [(what, m) for what, m in least if m]
    wake, django_wake = floors["wake"], floors.get("django_wake")
    scaling = floors.get("queue_scaling")
    return [
        "",
        "## What this machine allows",
        "",
        "The first four rows are steps every peer pays for, timed alone in a bare loop in the "
        "same run; the rows after them are whole workers cut down to the least any "
        "Redis-backed worker for django.tasks does, none of them durable (`bench/floors.py`). "
        "No worker can go faster than its steps, and a django.tasks worker on Redis does at "
        "least what these do.",
        "",
        "| step | calls/s | CPU µs/call |",
        "|---|---:|---:|",
        *(f"| {what} | {m['rate']:,.0f} | {m['cpu_us']:,.0f} |" for what, m in rows),
        "",
        f"An idle process blocked in BLPOP receives what another process pushes after "
        f"{wake['p50_ms']:.2f} ms (p50), {wake['p95_ms']:.2f} ms (p95), idle 50–150 ms in "
        "between as in the pickup figure.",
        *(
            [
                "",
                f"The least a Django worker on Redis does for one idle pickup {PICKUP_STEPS}: "
                f"{django_wake['p50_ms']:.2f} ms (p50), {django_wake['p95_ms']:.2f} ms (p95).",
            ]
            if django_wake
            else []
        ),
        *(
            [
                "",
                f"The least Redis queue, one thread per process: {scaling['one']:,.0f}/s in one "
                f"process, {scaling['two']:,.0f}/s in two side by side ({scaling['ratio']:.2f}×; "
                f"the machine {scaling['idle'] * 100:.0f}% idle, Redis "
                f"{scaling['redis_us']:,.0f} µs of CPU per task): for reference, not a floor of "
                "the two-process ratio.",
            ]
            if scaling and "idle" in scaling
            else []
        ),
        *(
            [
                "",
                "Each figure here is the better of two measurements, before and after the "
                "peers: the machine's speed drifts over a run.",
            ]
            if calibration.get("measurements", 1) > 1
            else []
        ),
    ]


def database(table, peers) -> list[str]:
    lines = []
    for engine, suffix in (("SQLite", ""), ("PostgreSQL", " (PostgreSQL)")):
        ours = median(table, f"{TM} database{suffix}", "throughput")
        theirs = median(table, f"django-tasks-db{suffix}", "throughput")
        if ours is None or theirs is None:
            continue
        lines += [
            "",
            f"## Database backends (issue 6): {engine}, one worker process, no-op tasks",
            "",
            f"threadmill's DatabaseTaskBackend drains {ours:,.0f} tasks/s against "
            f"django-tasks-db's `db_worker` {theirs:,.0f} tasks/s: {ours / theirs:.2f}× "
            f"(target ≥ 3×: {'met' if ours >= 3 * theirs else 'not met'}).",
        ]
    return lines


def postgres(report: dict) -> list[str]:
    seen = report.get("postgres")
    if not seen:
        return []
    return [
        "",
        f"PostgreSQL {seen.get('server_version', '?')}: a fresh throw-away cluster per drain "
        "(`tests.servers.PostgresServer`, loopback, a free port) on the same machine, with its "
        "durable defaults: "
        + ", ".join(
            f"`{name} = {seen[name]}`"
            for name in ("fsync", "synchronous_commit", "full_page_writes", "wal_level")
            if name in seen
        )
        + " (as checked with `SHOW` on the running server). Both backends use the same "
        "database settings (`bench/peers/postgres.py`) and psycopg 3.",
    ]


def method(report: dict) -> list[str]:
    calibration = report.get("calibration", {})
    return [
        "",
        "## How each figure is measured",
        "",
        "- **Task body**, the same for every peer (`bench/bench_common.py`): one Redis `INCR` "
        "on a counter; the task that makes it reach N notes the time.",
        "- **No-op tasks/s**: N tasks enqueued first, then the worker starts; the rate is "
        "(N − 1) / (end of the last task − end of the first), so boot time is not counted.",
        "- **Worker CPU µs/task**: user + system CPU of every process of the pool (arbiter, "
        "children, work horses; read from /proc) between the first and the last task, "
        "divided by the tasks run in between.",
        "- **Pickup latency**: one process, idle; the driver enqueues one task, waits for it, "
        "sleeps 50–150 ms (so the pool is idle again) and repeats. The task records "
        "`time.time()` at its start minus the time just before `enqueue` was called. "
        "django-tasks-db polls its database once a second, so it gets a fifth of the samples.",
        "- **Idle Redis commands/s**: a warmed-up pool of one process, idle for the window; the "
        "commands its connections send, from `MONITOR` (a Lua script counts once; the commands "
        "a script runs are not counted). `INFO commandstats` deltas, which count those too, are "
        "in the raw results. django-tasks-db polls SQLite, not Redis: not shown.",
        "- **Overhead**: tasks burning 5 ms of their thread's CPU, two worker processes of one "
        "thread each: (wall × 2 − summed task CPU) / tasks. The task's own reporting round "
        f"trip (pipelined INCR + INCRBY) is in it: alone it takes "
        f"{calibration.get('report_wall_us', 0):.0f} µs wall, "
        f"{calibration.get('report_cpu_us', 0):.0f} µs CPU. Wall time counts every moment a "
        "worker process waits for a core that Redis, the driver or other work on the machine "
        "holds; **overhead, CPU** does not: it is the pool's CPU per task (its processes, from "
        "/proc) minus the task's own.",
        "- **Enqueue/s**: the N tasks of the throughput drain, enqueued one by one from one "
        "thread with each peer's own API (`Task.enqueue`, `send`, `delay`, `Queue.enqueue`).",
        "",
        "Peers are configured as their documentation recommends for throughput: Dramatiq's "
        "worker with its 8 default threads; Huey's consumer with one worker thread (processes "
        "for the CPU-bound figure); Celery prefork with concurrency 1, `--without-gossip "
        "--without-mingle --without-heartbeat`, results ignored, prefetch multiplier 64 (its "
        "optimizing guide, for many short tasks); RQ's default worker started from a script "
        "that imports the task module first (its performance notes); django-tasks-db's "
        "`db_worker` with its defaults. Every Redis client uses hiredis.",
    ]


if __name__ == "__main__":
    with open(sys.argv[1]) as raw:
        print(markdown(json.load(raw)), end="")
