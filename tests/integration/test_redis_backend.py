"""What only the Redis backend promises: its key layout, scripts, wake-ups and outages."""

import json
import re
import threading
import time

import pytest
import redis
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.tasks import TaskResultStatus, task_backends
from redis.crc import key_slot

from tests import tasks
from tests.conftest import redis_tasks_setting_for
from tests.servers import RedisServer, free_port, wait_for
from tests.tcp_proxy import TcpProxy
from threadmill.backends.redis import SCRIPTS, RedisTaskBackend
from threadmill.exceptions import BackendUnavailable

pytestmark = pytest.mark.usefixtures("redis_tasks_setting")


@pytest.fixture
def backend(settings, redis_tasks_setting):
    settings.TASKS = redis_tasks_setting
    return task_backends["default"]


def keys_of(backend) -> list[bytes]:
    return backend.client.keys(backend.prefix + "*")


def test_every_key_of_an_alias_lies_in_one_cluster_slot(backend):
    tasks.noop.enqueue()
    tasks.noop.using(queue_name="low").enqueue()
    tasks.noop.using(run_after=tasks_now_plus(3600)).enqueue()
    backend.maintain("a-pool")
    leased = backend.acquire(timeout=1, worker_id="h:1:t", pool_id="a-pool")
    backend.retry(with_failure(leased), tasks_now_plus(3600))
    keys = keys_of(backend)
    assert len(keys) >= 6
    assert {key_slot(key) for key in keys} == {key_slot(b"{default}")}
    assert all(b"{default}" in key for key in keys)


def test_each_operation_is_one_script_whose_header_names_its_keys_and_arguments():
    scripts = sorted(SCRIPTS.glob("*.lua"))
    assert {path.stem for path in scripts} >= {
        "enqueue",
        "acquire",
        "acknowledge",
        "release",
        "retry",
        "maintain",
    }
    for path in scripts:
        text = path.read_text()
        used_keys = {int(n) for n in re.findall(r"KEYS\[(\d+)\]", _code(text))}
        named_keys = {int(n) for n in re.findall(r"^-- KEYS\[(\d+)\]", text, re.M)}
        assert used_keys <= named_keys, f"{path.name} uses keys its header does not name"
        used_args = {int(n) for n in re.findall(r"ARGV\[(\d+)\]", _code(text))}
        named_args = {int(n) for n in re.findall(r"^-- ARGV\[(\d+)\]", text, re.M)}
        assert used_args <= named_args, f"{path.name} uses arguments its header does not name"
        assert "cjson" not in text, f"{path.name} decodes JSON"


def test_a_script_builds_no_key_name_but_a_tasks_own_under_the_prefix_it_is_given():
    # A task's hash is the prefix handed in KEYS[1] (which carries the hash tag) and its id,
    # so it lies in the alias's slot although it cannot be named before the script runs.
    for path in SCRIPTS.glob("*.lua"):
        code = _code(path.read_text())
        task_variables = set(re.findall(r"local (\w+) = tasks \.\. \w+\n", code))
        for call in re.findall(r"redis\.call\('(\w+)',\s*([^,)]+)", code):
            command, first_argument = call
            first_argument = first_argument.strip()
            if command in ("TIME",):
                continue
            assert (
                "KEYS" in first_argument
                or first_argument in _key_variables(path.read_text()) - {"tasks"}
                or first_argument in task_variables
                or re.fullmatch(r"tasks \.\. \w+", first_argument)
            ), f"{path.name}: {command} on {first_argument}"


def test_an_idle_acquire_blocks_on_the_server_instead_of_polling(backend):
    backend.acquire_many(count=1, timeout=0, worker_id="h:1:t")  # load the script first
    before = _commands(backend)
    started = time.monotonic()
    assert backend.acquire_many(count=10, timeout=5, worker_id="h:1:t") == []
    assert time.monotonic() - started >= 4.9
    issued = _commands(backend) - before - 1  # less the INFO that measured it
    assert issued <= 3, f"an idle 5 s acquire issued {issued} commands"


def test_an_idle_acquire_waits_for_a_scheduled_task_without_polling(backend):
    tasks.noop.using(run_after=tasks_now_plus(0.5)).enqueue()
    backend.acquire_many(count=1, timeout=0, worker_id="h:1:t")
    before = _commands(backend)
    assert backend.acquire(timeout=5, worker_id="h:1:t")
    assert _commands(backend) - before - 1 <= 4


def test_a_resent_lease_call_leases_nothing_more_and_gets_the_same_tasks(backend):
    for _ in range(4):
        tasks.noop.enqueue()
    keys = [
        backend.task_key(""),
        backend.key("pool_leases"),
        backend.key("receipt:resent"),
        *backend.queue_keys("default"),
    ]
    args = [2, json.dumps("h:1:t"), "h:1:t", "", 60, 100, 0, 300]
    first = backend._run("acquire", keys, args)
    second = backend._run("acquire", keys, args)
    assert len(first[2::6]) == 2
    assert second[2::6] == first[2::6]
    assert backend.count_pending() == {"ready": 2, "scheduled": 0, "running": 2}


def test_a_lease_whose_reply_was_lost_comes_back_on_reconnecting_without_a_second_wait(
    redis_server, key_prefix
):
    # The lease is sent behind the wait. Should the link fail after Redis ran both, the retry
    # must not wait again (the wake-up is used up): the task would sit leased meanwhile.
    proxy = TcpProxy(redis_server.port)
    try:
        direct = RedisTaskBackend("default", _setting(redis_server.url, key_prefix))
        proxied = RedisTaskBackend("default", _setting(proxy.url, key_prefix))
        leased: list = []

        def acquire() -> None:
            leased.extend(proxied.acquire_many(count=1, timeout=20, worker_id="h:1:t"))

        waiter = threading.Thread(target=acquire)
        blocked = _blocked_clients(direct)  # the server is shared with other tests
        waiter.start()
        wait_for(lambda: _blocked_clients(direct) == blocked + 1, what="the acquire to wait")
        proxy.cut(silent=True)  # from now on replies are held back, then lost
        enqueued = direct.enqueue(tasks.noop, [], {})
        wait_for(lambda: direct.count_pending()["running"] == 1, what="the lease to run")
        proxy.restore()
        waiter.join(5)
        assert [result.id for result in leased] == [enqueued.id]
    finally:
        proxy.stop()


def _setting(url: str, key_prefix: str) -> dict:
    return redis_tasks_setting_for(url, key_prefix)["default"]


def _blocked_clients(backend) -> int:
    return backend.client.info("clients")["blocked_clients"]


def test_a_resent_enqueue_call_queues_the_task_once(backend):
    enqueued = tasks.noop.enqueue()
    payload = backend.client.hget(backend.task_key(enqueued.id), "payload")
    keys = [backend.task_key(enqueued.id), backend.key("sequence")]
    keys.extend(backend.queue_keys("default")[:2])
    keys.append(backend.queue_keys("default")[3])
    again = backend._run("enqueue", keys, [enqueued.id, payload, "default", 0, ""])
    assert float(again) == enqueued.enqueued_at.timestamp()
    assert backend.count_pending()["ready"] == 1
    with pytest.raises(redis.ResponseError, match="exists already"):
        backend._run("enqueue", keys, [enqueued.id, b"{}", "default", 0, ""])


def test_enqueue_raises_a_clear_error_at_once_when_redis_is_unreachable(settings, key_prefix):
    url = f"redis://127.0.0.1:{free_port()}/0"
    settings.TASKS = redis_tasks_setting_for(url, key_prefix)
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match="unreachable"):
        tasks.noop.enqueue()
    assert time.monotonic() - started < 3


def test_the_worker_connection_rides_out_a_short_redis_restart(settings, key_prefix):
    server = RedisServer(appendonly=True).start()
    try:
        settings.TASKS = redis_tasks_setting_for(server.url, key_prefix)
        backend = task_backends["default"]
        enqueued = tasks.noop.enqueue()
        server.kill()
        restarter = threading.Timer(0.5, server.start)
        restarter.start()
        leased = backend.acquire(timeout=5, worker_id="h:1:t")  # retried with backoff
        restarter.join()
        assert leased.id == enqueued.id
    finally:
        server.stop()


def test_only_a_finished_task_expires_and_it_leaves_nothing_behind(
    settings, redis_server, key_prefix
):
    settings.TASKS = redis_tasks_setting_for(redis_server.url, key_prefix, result_ttl=1)
    backend = task_backends["default"]
    finished, running, ready = (tasks.noop.enqueue() for _ in range(3))
    backend.acknowledge(with_success(backend.acquire(timeout=1, worker_id="h:1:t")))
    backend.acquire(timeout=1, worker_id="h:1:t")
    assert backend.client.pttl(backend.task_key(finished.id)) > 0
    assert backend.client.ttl(backend.task_key(running.id)) == -1  # pending work never expires
    assert backend.client.ttl(backend.task_key(ready.id)) == -1
    deadline = time.monotonic() + 5
    while backend.client.exists(backend.task_key(finished.id)) and time.monotonic() < deadline:
        time.sleep(0.02)
    leftovers = [
        key
        for key in backend.client.scan_iter(f"{backend.prefix}*")
        if finished.id.encode() in key or finished.id.encode() in _members(backend, key)
    ]
    assert leftovers == []
    assert backend.get_result(running.id).status == TaskResultStatus.RUNNING


@pytest.mark.parametrize(
    ("entry", "check_id"),
    [
        ({"REDIS_URL": None}, "threadmill.E001"),
        ({"REDIS_URL": "http://example.com"}, "threadmill.E002"),
        ({"OPTIONS": {"lease_ttl": "soon"}}, "threadmill.E003"),
        ({"OPTIONS": {"batch_size": 0}}, "threadmill.E003"),
        ({"OPTIONS": {"result_ttl": float("inf")}}, "threadmill.E003"),
        ({"OPTIONS": {"lease_ttl": float("nan")}}, "threadmill.E003"),
        ({"OPTIONS": {"no_such_option": 1}}, "threadmill.E003"),
    ],
)
def test_bad_settings_are_errors_of_manage_py_check(settings, redis_tasks_setting, entry, check_id):
    settings.TASKS = {"default": {**redis_tasks_setting["default"], **entry}}
    with pytest.raises(SystemCheckError, match=check_id):
        call_command("check")


def test_check_deploy_warns_when_redis_can_lose_acknowledged_work(settings, key_prefix, capsys):
    server = RedisServer("--maxmemory-policy", "allkeys-lru").start()
    try:
        settings.TASKS = redis_tasks_setting_for(server.url, key_prefix)
        call_command("check", deploy=True)
        output = capsys.readouterr().err
        assert "threadmill.W001" in output
        assert "threadmill.W002" in output
    finally:
        server.stop()


@pytest.mark.parametrize(
    "make_server",
    [
        pytest.param(lambda: RedisServer(appendonly=True), id="a durable redis"),
        pytest.param(
            lambda: RedisServer("--rename-command", "CONFIG", ""), id="config not allowed"
        ),
    ],
)
def test_check_deploy_is_quiet(make_server, settings, key_prefix, capsys):
    server = make_server().start()
    try:
        settings.TASKS = redis_tasks_setting_for(server.url, key_prefix)
        call_command("check", deploy=True)
        captured = capsys.readouterr()
        assert "threadmill.W" not in captured.err + captured.out
    finally:
        server.stop()


# --- helpers -------------------------------------------------------------------------------


def tasks_now_plus(seconds: float):
    from datetime import timedelta

    from django.utils import timezone

    return timezone.now() + timedelta(seconds=seconds)


def with_failure(task_result):
    from threadmill.backends.serialization import synthetic_error
    from threadmill.outcomes import failed as failed_with

    return failed_with(task_result, synthetic_error(ValueError, "failed"))


def with_success(task_result):
    object.__setattr__(task_result, "status", TaskResultStatus.SUCCESSFUL)
    return task_result


def _commands(backend) -> int:
    """Commands the clients sent (those the scripts run inside Redis are not round trips)."""
    in_scripts = set()
    for path in SCRIPTS.glob("*.lua"):
        in_scripts.update(c.lower() for c in re.findall(r"redis\.call\('(\w+)'", path.read_text()))
    stats = backend.client.info("commandstats")
    return sum(
        entry["calls"]
        for name, entry in stats.items()
        if name.removeprefix("cmdstat_").split("|")[0] not in in_scripts
    )


def _members(backend, key: bytes) -> bytes:
    """The members of a sorted set (where ids wait), joined; b"" for a key of another type."""
    if backend.client.type(key) != b"zset":
        return b""
    return b"\n".join(backend.client.zrange(key, 0, -1))


def _code(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("--"))


def _key_variables(text: str) -> set[str]:
    """Local names a script binds to KEYS entries (e.g. `local tasks = KEYS[1]`)."""
    names = set()
    for match in re.finditer(r"local ([\w, ]+) = (KEYS\[[^\n]+)", _code(text)):
        names.update(n.strip() for n in match.group(1).split(","))
    return names | {"ready", "scheduled", "running", "wake", "pools"}
