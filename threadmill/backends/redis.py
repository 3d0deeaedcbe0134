"""A durable task backend on Redis (standalone, or a Cluster: one hash tag per alias).

Guarantees
- An enqueue is one atomic script: the task is queued whole or, on error, not at all.
- Pending work (ready, scheduled, running) never expires; only a finished result does,
  `result_ttl` after it finished (Redis expires the finished task's hash itself).
- Delivery is at least once. A lease ends by acknowledgement, retry or release, or when it
  expires (`lease_ttl`) or its pool's heartbeat stops (`pool_ttl`); a late acknowledgement from
  a former holder is refused and logged, never written.
- Order: higher priority first, then first queued first, within a queue; several queues are
  served round-robin, so a busy queue never starves another.
- Payloads (args, kwargs) and return values are stored and returned byte for byte: the scripts
  move them as opaque strings and never decode JSON.

Limits
- Durability is Redis's: with `appendonly no`, or `appendfsync everysec`, a crash of the Redis
  server loses the last writes (see `manage.py check --deploy`). A `maxmemory-policy` other than
  `noeviction` lets Redis drop queued work under memory pressure.
- Times come from the Redis server's clock; `run_after` is compared with it.
- On a Cluster, while the slot of an alias moves to another shard, Redis runs a script only
  where all the keys it declares are, and refuses it otherwise (TRYAGAIN; retried), so the
  alias pauses until the move is done. enqueue, release and retry declare the one task hash
  they touch. The scripts that learn task ids as they run declare the prefix of the task
  hashes, a key that never exists, so none of them starts mid-move and finds some of its tasks
  moved already.

Layout: every key of an alias is `<key_prefix>:{<alias>}:<name>`; the `{alias}` hash tag puts
them in one Cluster slot. Each task is a hash of its own, `task:<id>`: Redis spends about a
fifth less per lease and acknowledgement on small hashes than on one hash of every task's
fields, whose names are long and whose table keeps growing and rehashing. A script is handed
every key it touches in KEYS, except where it learns a task's id only as it runs (a lease
pops it): it names that task's hash from the prefix it is handed, which carries the hash tag,
so the hash lies in the slot the script runs on.
"""

import json
import logging
import random
import secrets
import socket
import time
from collections.abc import Iterator
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from django.core import checks
from django.tasks import TaskResult, TaskResultStatus
from django.tasks.exceptions import TaskResultDoesNotExist
from django.tasks.signals import task_enqueued

from threadmill.backends.base import COMMON_OPTIONS, AcknowledgeableTaskBackend, lease_token
from threadmill.backends.redis_connections import HeldConnections, Script
from threadmill.backends.serialization import (
    StoredTask,
    encode_errors,
    encode_payload,
    encode_return_value,
    enqueued_result,
    new_task_id,
    normalized_arguments,
    synthetic_error,
    to_task_result,
)
from threadmill.exceptions import (
    AcknowledgementTimeout,
    BackendUnavailable,
    InvalidTaskPath,
)
from threadmill.tasks import Task

try:
    import redis
    import redis.cluster
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry
except ImportError:  # reported by the system check, not at import
    redis = None  # type: ignore[assignment]

logger = logging.getLogger("threadmill.backends.redis")

SCRIPTS = Path(__file__).with_name("lua")

# A blocking wait is cut into slices no longer than this, so a stalled connection is noticed
# (the socket timeout is a little longer; TCP keepalive notices a dead peer sooner).
LONGEST_BLOCK = 30.0

# A peer that stops answering is found within about 10 + 3 x 3 seconds, even mid-wait.
KEEPALIVE = {
    option: value
    for option, value in (
        (getattr(socket, "TCP_KEEPIDLE", None), 10),
        (getattr(socket, "TCP_KEEPINTVL", None), 3),
        (getattr(socket, "TCP_KEEPCNT", None), 3),
    )
    if option is not None
}

# How long an interrupt waits for the worker it is meant for, if it is not blocked now.
INTERRUPT_TTL = 60

# How long a lease call's receipt is kept: longer than redis-py's retries of that call.
RECEIPT_TTL = 300

# The fields of a task, in the order `get_result` reads them.
READ_FIELDS = (
    "payload",
    "status",
    "enqueued_at",
    "started_at",
    "attempted_at",
    "finished_at",
    "worker_ids",
    "errors",
    "return_value",
)


class RedisTaskBackend(AcknowledgeableTaskBackend):
    """Tasks in Redis: `REDIS_URL`, optional `QUEUES`, and the `OPTIONS` of the contract."""

    known_options = {
        **COMMON_OPTIONS,
        "key_prefix": ("threadmill", "text"),
        "cluster": (False, "flag"),
    }

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        super().__init__(alias, params)
        self.url: str | None = params.get("REDIS_URL")
        key_prefix = self.settings["key_prefix"]
        if not isinstance(key_prefix, str) or not key_prefix or "{" in key_prefix:
            self.option_problems.append(
                f"key_prefix must be a non-empty string without braces, not {key_prefix!r}."
            )
            key_prefix = "threadmill"
        self.prefix = f"{key_prefix}:{{{alias}}}:"
        self.cluster = self.settings["cluster"]
        if not isinstance(self.cluster, bool):
            self.option_problems.append(f"cluster must be True or False, not {self.cluster!r}.")
        self._rotation = random.randrange(1 << 16)

    # --- connections ------------------------------------------------------------------------
    # redis-py's connection pool notices a fork (it checks the pid) and opens new sockets in
    # the child, so a backend built before the pool forks its workers is safe to use after.

    @cached_property
    def client(self) -> "redis.Redis":
        """The connection for enqueue and reads: fails fast, so a caller hears of an outage."""
        return self._connect(retries=1, socket_timeout=5.0)

    @cached_property
    def worker_client(self) -> "redis.Redis":
        """The connection of the pool: rides out short outages, retrying with backoff."""
        return self._connect(retries=8, socket_timeout=LONGEST_BLOCK + 5)

    def _connect(self, retries: int, socket_timeout: float) -> "redis.Redis":
        if redis is None:
            raise BackendUnavailable(
                "The Redis backend needs redis-py: pip install threadmill[redis]"
            )
        if not self.url:
            raise BackendUnavailable(f"TASKS[{self.alias!r}] has no REDIS_URL.")
        retry = Retry(ExponentialBackoff(cap=2.0, base=0.05), retries)
        if self.cluster is True:
            # Every key of the alias is in one slot, so the client talks to a single shard;
            # it follows MOVED/ASK redirections itself when slots migrate.
            return redis.cluster.RedisCluster.from_url(
                self.url,
                socket_connect_timeout=5.0,
                socket_timeout=socket_timeout,
                socket_keepalive=True,
                socket_keepalive_options=KEEPALIVE,
                retry=retry,
            )
        return redis.Redis.from_url(
            self.url,
            socket_connect_timeout=5.0,
            socket_timeout=socket_timeout,
            socket_keepalive=True,
            socket_keepalive_options=KEEPALIVE,
            health_check_interval=30,
            retry=retry,
            retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        )

    @cached_property
    def _held(self) -> HeldConnections:
        """Connections lent per call, for enqueue and reads (fail fast, like `client`)."""
        return HeldConnections(self.client, self.client.get_retry())

    @cached_property
    def _worker_held(self) -> HeldConnections:
        """Connections lent per call, for the pool's calls (ride out outages)."""
        return HeldConnections(self.worker_client, self.worker_client.get_retry())

    def _run(self, name: str, keys: list, args: list, *, worker: bool = True) -> Any:
        """Run one of our scripts: over a held connection, or through the Cluster client."""
        return self._run_many(name, [(keys, args)], worker=worker)[0]

    def _run_many(self, name: str, calls: list[tuple[list, list]], *, worker: bool = True) -> list:
        """Run a script once per (keys, args) in one round trip."""
        if self.cluster is True:
            client = self.worker_client if worker else self.client
            script = _cluster_script(name, client)
            if len(calls) == 1:
                keys, args = calls[0]
                return [script(keys=keys, args=args, client=client)]
            pipe = self._pipeline(client)
            for keys, args in calls:
                script(keys=keys, args=args, client=pipe)
            return pipe.execute()
        held = self._worker_held if worker else self._held
        return held.scripts(SCRIPTS_BY_NAME[name], calls)

    def _pipeline(self, client: "redis.Redis"):
        """A pipeline to the server holding this alias's slot (one round trip for many calls)."""
        if self.cluster is True:
            # A Cluster pipeline refuses scripts; all our keys share one slot, so pipeline on
            # the node that serves it.
            client = client.get_node_from_key(self.key("sequence")).redis_connection
        return client.pipeline(transaction=False)

    # --- keys -------------------------------------------------------------------------------

    def key(self, name: str) -> str:
        return self.prefix + name

    def task_key(self, task_id: str) -> str:
        """The hash of one task; with "" the prefix the scripts add a task's id to."""
        return self.key(f"task:{task_id}")

    def queue_keys(self, queue_name: str) -> tuple[str, str, str, str]:
        """The ready, scheduled, running and wake keys of one queue."""
        return (
            self.key(f"ready:{queue_name}"),
            self.key(f"scheduled:{queue_name}"),
            self.key(f"running:{queue_name}"),
            self.key(f"wake:{queue_name}"),
        )

    # --- enqueue and read -------------------------------------------------------------------

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> TaskResult:
        self.validate_task(task)
        task_id = new_task_id()
        args, kwargs = normalized_arguments(args, kwargs)
        payload = encode_payload(task, args, kwargs)
        ready, scheduled, _, wake = self.queue_keys(task.queue_name)
        run_after = repr(task.run_after.timestamp()) if task.run_after else ""
        with self._reporting_outage():
            enqueued_at = self._run(
                "enqueue",
                [self.task_key(task_id), self.key("sequence"), ready, scheduled, wake],
                [task_id, payload, task.queue_name, task.priority, run_after],
                worker=False,
            )
        result = enqueued_result(task, task_id, enqueued_at, args, kwargs, self.alias)
        task_enqueued.send(type(self), task_result=result)
        return result

    def get_result(self, result_id: str) -> TaskResult:
        with self._reporting_outage():
            values = self.client.hmget(self.task_key(result_id), READ_FIELDS)
        if values[0] is None or values[1] is None:
            raise TaskResultDoesNotExist(result_id)
        return to_task_result(StoredTask(result_id, *_texts(values)), self.alias)

    # --- leasing ----------------------------------------------------------------------------

    def acquire_many(
        self,
        *queue_names: str,
        count: int,
        timeout: float | None = None,
        worker_id: str | None = None,
        pool_id: str | None = None,
    ) -> list[TaskResult]:
        queue_names = self._queues(queue_names)
        worker_id = worker_id or f"anonymous:{secrets.token_hex(4)}"
        if "\t" in worker_id or (pool_id and "\t" in pool_id):
            raise ValueError("worker_id and pool_id cannot contain tab characters.")
        # The receipt key is new for each call, and redis-py resends a call unchanged when its
        # connection fails: so a resent call finds its receipt and leases nothing twice.
        keys = [self.task_key(""), self.key("pool_leases"), ""]
        wait_keys = []
        for name in queue_names:
            queue_keys = self.queue_keys(name)
            keys.extend(queue_keys)
            wait_keys.append(queue_keys[3])
        wait_keys.append(self._interrupt_key(worker_id))  # last: an interrupt, not work
        deadline = None if timeout is None else time.monotonic() + timeout

        def lease_call() -> tuple[list, list]:
            self._rotation += 1
            keys[2] = self.key(f"receipt:{secrets.token_hex(8)}")
            args = [
                count,
                json.dumps(worker_id),
                worker_id,
                pool_id or "",
                self.lease_ttl,
                self.batch_size,
                self._rotation,
                RECEIPT_TTL,
            ]
            return list(keys), args

        reply = self._run("acquire", *lease_call())
        while True:
            leased = self._leased(reply, worker_id)
            if leased or len(reply) > 2:
                return leased
            due = None  # when the earliest scheduled task falls due, on our clock
            if reply[1]:
                due = time.monotonic() + max(0.0, float(reply[1]) - float(reply[0])) + 0.001
            block = _block_for(deadline, due)
            if block is None:
                return []
            if block == 0:
                reply = self._run("acquire", *lease_call())
                continue
            # Every enqueue, retry, release and promotion pushes a wake-up token, so the lease
            # that follows a wake-up is sent with the wait, in one write: the task comes back
            # in the same round trip as the wake-up. A wait that times out leases too (one
            # more command per LONGEST_BLOCK while idle); a token on the worker's own interrupt
            # key gives up, keeping whatever that lease took.
            woken, reply = self._wait_then_lease(wait_keys, block, lease_call())
            if woken is not None and _text(woken[0]) == wait_keys[-1]:
                return self._leased(reply, worker_id)

    def _wait_then_lease(
        self, wait_keys: list[str], block: float, call: tuple[list, list]
    ) -> tuple[Any, list]:
        block = max(0.001, block)  # BLPOP takes a float timeout (0 would mean "for ever")
        if self.cluster is True:
            woken = self.worker_client.blpop(wait_keys, timeout=block)
            return woken, self._run("acquire", *call)
        woken, reply = self._worker_held.wait_then_script(
            ("BLPOP", *wait_keys, block), SCRIPTS_BY_NAME["acquire"], *call
        )
        if isinstance(woken, Exception):
            # The wait failed (CLIENT UNBLOCK ... ERROR, a key of another type), yet the lease
            # ran: what it took is the caller's. Only with nothing taken does the error go up
            # (a caller backs off then, instead of failing the same way in a loop).
            if len(reply) <= 2:
                raise woken
            logger.warning("A wait for work failed: %s", woken)
            woken = None
        return woken, reply

    def interrupt(self, worker_id: str) -> None:
        key = self._interrupt_key(worker_id)
        pipe = self._pipeline(self.worker_client)
        pipe.lpush(key, "1")
        pipe.expire(key, INTERRUPT_TTL)
        pipe.execute()

    def _interrupt_key(self, worker_id: str) -> str:
        return self.key(f"interrupt:{worker_id}")

    def _leased(self, reply: list, worker_id: str) -> list[TaskResult]:
        now, leased = reply[0], []
        for i in range(2, len(reply), 6):
            task_id, payload, enqueued_at, started_at, worker_ids, errors = _texts(reply[i : i + 6])
            stored = StoredTask(
                id=task_id,
                payload=payload,
                status="RUNNING",
                enqueued_at=enqueued_at,
                started_at=started_at,
                last_attempted_at=now,
                worker_ids=worker_ids,
                errors=errors,
            )
            try:
                leased.append(to_task_result(stored, self.alias))
            except InvalidTaskPath as error:
                self._refuse(stored, error)
        return leased

    def _refuse(self, stored: StoredTask, error: InvalidTaskPath) -> None:
        """Fail a leased task whose payload names no Task; nothing of it is run."""
        logger.error("Task %s refused: %s", stored.id, error)
        worker_ids = json.loads(stored.worker_ids or "[]")
        errors = json.loads(stored.errors or "[]")
        errors.append(
            {
                "exception_class_path": "threadmill.exceptions.InvalidTaskPath",
                "traceback": f"threadmill.exceptions.InvalidTaskPath: {error}\n",
            }
        )
        final = _Final(
            stored.id,
            _token(len(worker_ids), worker_ids[-1]),
            "FAILED",
            b"",
            json.dumps(errors).encode(),
            json.loads(stored.payload).get("queue_name", ""),
        )
        self._acknowledge([final], by_holder=False)

    # --- ending a lease ---------------------------------------------------------------------

    @property
    def _result_ttl_ms(self) -> int:
        """`result_ttl` as the whole milliseconds PEXPIRE takes (at least one: zero deletes)."""
        return max(1, round(self.result_ttl * 1000))

    def acknowledge(self, task_result: TaskResult, *, by_holder: bool = True) -> bool:
        return self._acknowledge([_final(task_result)], by_holder)[0]

    def acknowledge_many(self, task_results: list[TaskResult]) -> list[bool]:
        """Acknowledge several leased tasks in one round trip (each on its own lease)."""
        # Encode everything first: a return value that cannot be stored raises before any
        # result is written.
        return self._acknowledge([_final(result) for result in task_results], True)

    def _acknowledge(self, finals: list["_Final"], by_holder: bool) -> list[bool]:
        """Publish final results, one script call per queue among them, all in one round trip;
        answer, in order, whether each was recorded (False: its lease had ended)."""
        by_queue: dict[str, list[int]] = {}
        for i, final in enumerate(finals):
            by_queue.setdefault(final.queue_name, []).append(i)
        calls = []
        for queue_name, indices in by_queue.items():
            keys = [self.task_key(""), self.queue_keys(queue_name)[2], self.key("pool_leases")]
            args: list = [self._result_ttl_ms, "holder" if by_holder else "settler"]
            for i in indices:
                args.extend(finals[i][:5])
            calls.append((keys, args))
        recorded = [False] * len(finals)
        replies = self._run_many("acknowledge", calls)
        for indices, reply in zip(by_queue.values(), replies, strict=True):
            for n, i in enumerate(indices):
                outcome, detail = reply[2 * n], reply[2 * n + 1]
                recorded[i] = outcome != 0
                if outcome == 0:
                    logger.warning(
                        "Late result of task %s discarded: its lease (attempt %s) had ended; "
                        "the recorded status %s stands",
                        finals[i].task_id,
                        finals[i].token.replace("\t", " by "),
                        _text(detail) or "(expired)",
                    )
        return recorded

    def release(self, task_result: TaskResult) -> bool:
        ready, _, running, wake = self.queue_keys(task_result.task.queue_name)
        released = self._run(
            "release",
            [self.task_key(task_result.id), running, self.key("pool_leases"), ready, wake],
            [task_result.id, lease_token(task_result)],
        )
        if not released:
            logger.warning("Task %s not released: its lease had ended", task_result.id)
        return bool(released)

    def retry(self, task_result: TaskResult, run_after: datetime) -> bool:
        ready, scheduled, running, wake = self.queue_keys(task_result.task.queue_name)
        retried = self._run(
            "retry",
            [
                self.task_key(task_result.id),
                running,
                self.key("pool_leases"),
                ready,
                scheduled,
                wake,
            ],
            [
                task_result.id,
                lease_token(task_result),
                encode_errors(task_result.errors),
                repr(run_after.timestamp()),
            ],
        )
        if not retried:
            logger.warning("Task %s not retried: its lease had ended", task_result.id)
        return bool(retried)

    # --- maintenance ------------------------------------------------------------------------

    def maintain(self, *pool_ids: str | None) -> dict[str, int]:
        queue_names = sorted(self.queues)
        keys = [self.task_key(""), self.key("pool_leases"), self.key("pools")]
        for name in queue_names:
            keys.extend(self.queue_keys(name))
        reply = self._run(
            "maintain",
            keys,
            [
                "\n".join(pool_id for pool_id in pool_ids if pool_id),
                self.pool_ttl,
                self.lease_ttl,
                self.batch_size,
                *queue_names,
            ],
        )
        # Finished results expire in Redis itself (`result_ttl`), so there is nothing to trim.
        report = {"promoted": int(reply[0]), "trimmed": 0, "settled": 0}
        seen = set()
        for i in range(1, len(reply), 3):
            task_id, lease, reason = _texts(reply[i : i + 3])
            if task_id in seen or not lease:
                continue
            seen.add(task_id)
            report["settled"] += self._settle_orphan(task_id, lease, reason)
        return report

    def _settle_orphan(self, task_id: str, lease: str, reason: str) -> int:
        attempts, worker_id, pool_id = lease.split("\t", 2)
        if reason == "pool":
            message = f"pool {pool_id} stopped sending heartbeats while attempt {attempts} ran"
        else:
            message = f"the lease of attempt {attempts} by {worker_id} expired"
        try:
            task_result = self.get_result(task_id)
        except InvalidTaskPath as error:
            values = self.worker_client.hmget(self.task_key(task_id), READ_FIELDS)
            self._refuse(StoredTask(task_id, *_texts(values)), error)
            return 1
        except TaskResultDoesNotExist:
            return 0
        if lease_token(task_result) != f"{attempts}\t{worker_id}":
            return 0  # settled meanwhile by its holder or another pass
        logger.warning("Task %s orphaned: %s", task_id, message)
        return int(self.settle(task_result, synthetic_error(AcknowledgementTimeout, message)))

    def release_pool(self, pool_id: str) -> int:
        queue_names = sorted(self.queues)
        keys = [self.task_key(""), self.key("pool_leases"), self.key("pools")]
        for name in queue_names:
            ready, _, running, wake = self.queue_keys(name)
            keys.extend((ready, running, wake))
        released = self._run("release_pool", keys, [pool_id, *queue_names])
        return int(released)

    def forget_pool(self, pool_id: str) -> None:
        # Not a removal: a heartbeat dated long ago. The next maintenance pass settles any lease
        # the pool still holds (none, after a clean stop), then drops the pool.
        self.worker_client.zadd(self.key("pools"), {pool_id: 0})

    def count_pending(self, *queue_names: str) -> dict[str, int]:
        pipe = self._pipeline(self.client)
        for name in self._queues(queue_names):
            ready, scheduled, running, _ = self.queue_keys(name)
            pipe.zcard(ready)
            pipe.zcard(scheduled)
            pipe.zcard(running)
        counts = pipe.execute()
        return {
            "ready": sum(counts[0::3]),
            "scheduled": sum(counts[1::3]),
            "running": sum(counts[2::3]),
        }

    # --- helpers ----------------------------------------------------------------------------

    def _queues(self, queue_names: tuple[str, ...]) -> tuple[str, ...]:
        if not queue_names:
            return tuple(sorted(self.queues))
        unknown = [name for name in queue_names if name not in self.queues]
        if unknown:
            raise ValueError(f"Unknown queue(s) {unknown} for backend {self.alias!r}.")
        return queue_names

    def _reporting_outage(self):
        return _ReportingOutage(self)

    # --- checks -----------------------------------------------------------------------------

    def check(self, **kwargs: Any) -> Iterator[checks.CheckMessage]:
        yield from super().check(**kwargs)
        if redis is None:
            yield checks.Error(
                "The Redis task backend needs redis-py.",
                hint="pip install 'threadmill[redis]'",
                obj=self.alias,
                id="threadmill.E004",
            )
        if not self.url:
            yield checks.Error(
                f"TASKS[{self.alias!r}] has no REDIS_URL.",
                hint="Set REDIS_URL, e.g. 'redis://localhost:6379/0'.",
                obj=self.alias,
                id="threadmill.E001",
            )
        elif not _valid_url(self.url):
            yield checks.Error(
                f"TASKS[{self.alias!r}]['REDIS_URL'] is not a Redis URL: {self.url!r}.",
                hint="Use redis://, rediss:// or unix:// URLs.",
                obj=self.alias,
                id="threadmill.E002",
            )

    def check_durability(self) -> Iterator[checks.CheckMessage]:
        """Warn when the Redis server can lose acknowledged work (run by `check --deploy`)."""
        if redis is None or not self.url or not _valid_url(self.url):
            return
        try:
            config = self.client.config_get("appendonly") | self.client.config_get(
                "maxmemory-policy"
            )
        except redis.ResponseError:
            return  # CONFIG is not allowed (managed Redis): nothing to say
        except redis.RedisError as error:
            yield checks.Warning(
                f"Could not reach Redis for TASKS[{self.alias!r}] to check its durability: {error}",
                obj=self.alias,
                id="threadmill.W003",
            )
            return
        if config.get("appendonly") == "no":
            yield checks.Warning(
                "Redis runs with appendonly no: a crash of the Redis server loses "
                "queued tasks and acknowledged results written since the last snapshot.",
                hint="Set appendonly yes (and appendfsync everysec or always).",
                obj=self.alias,
                id="threadmill.W001",
            )
        policy = config.get("maxmemory-policy")
        if policy and policy != "noeviction":
            yield checks.Warning(
                f"Redis evicts keys under memory pressure (maxmemory-policy {policy}): "
                "queued tasks and results can be dropped.",
                hint="Set maxmemory-policy noeviction.",
                obj=self.alias,
                id="threadmill.W002",
            )


def _block_for(deadline: float | None, due: float | None) -> float | None:
    """Seconds to wait for a wake-up: None when the deadline has passed, 0 when `due` has."""
    now = time.monotonic()
    if deadline is not None and now >= deadline:
        return None
    if due is not None and now >= due:
        return 0.0
    ends = [t - now for t in (deadline, due) if t is not None]
    return min([LONGEST_BLOCK, *ends])


def _token(attempts: int, worker_id: str) -> str:
    return f"{attempts}\t{worker_id}"


class _Final(NamedTuple):
    """A final result as acknowledge.lua takes it: its first five fields, in this order, are
    the script's arguments for one task."""

    task_id: str
    token: str
    status: str
    value: bytes
    errors: bytes
    queue_name: str


def _final(task_result: TaskResult) -> _Final:
    """A finished task result, encoded for acknowledge.lua (raises if it cannot be stored)."""
    if task_result.status not in (TaskResultStatus.SUCCESSFUL, TaskResultStatus.FAILED):
        raise ValueError(f"Only a finished task can be acknowledged, not {task_result.status}.")
    value = b""
    if task_result.status == TaskResultStatus.SUCCESSFUL:
        value = encode_return_value(task_result._return_value)
    return _Final(
        task_result.id,
        lease_token(task_result),
        task_result.status.value,
        value,
        encode_errors(task_result.errors),
        task_result.task.queue_name,
    )


class _ReportingOutage:
    """Turn a connection failure into BackendUnavailable naming the server, for callers."""

    def __init__(self, backend: RedisTaskBackend) -> None:
        self.backend = backend

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> bool:
        if (
            error is not None
            and redis is not None
            and isinstance(error, redis.ConnectionError | redis.TimeoutError)
        ):
            raise BackendUnavailable(
                f"Redis of task backend {self.backend.alias!r} is unreachable "
                f"({_redacted(self.backend.url)}): {error}"
            ) from error
        return False


SCRIPTS_BY_NAME = {path.stem: Script(path.read_text()) for path in SCRIPTS.glob("*.lua")}

_cluster_scripts: dict[tuple[str, int], Any] = {}


def _cluster_script(name: str, client: "redis.Redis"):
    """Register a script once per Cluster client; redis-py reloads it if a node forgot it."""
    key = (name, id(client))
    script = _cluster_scripts.get(key)
    if script is None:
        script = _cluster_scripts[key] = client.register_script(SCRIPTS_BY_NAME[name].text)
    return script


def _texts(values) -> list:
    return [_text(value) for value in values]


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def _valid_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if parts.scheme == "unix":
        return bool(parts.path)
    return parts.scheme in ("redis", "rediss") and bool(parts.hostname)


def _redacted(url: str | None) -> str:
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url
