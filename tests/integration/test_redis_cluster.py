"""The Redis backend on a real three-master Redis Cluster (the contract suite runs there too)."""

import pytest
import redis
from django.tasks import TaskResultStatus, task_backends
from redis.crc import key_slot

from tests import tasks
from tests.conftest import redis_tasks_setting_for


def test_two_aliases_live_on_different_shards_and_each_keeps_to_its_own(
    settings, redis_cluster, key_prefix
):
    settings.TASKS = {
        **redis_tasks_setting_for(redis_cluster.url, key_prefix, cluster=True),
        "other": redis_tasks_setting_for(redis_cluster.url, key_prefix, cluster=True)["default"],
    }
    assert redis_cluster.node_of_slot(key_slot(b"{default}")) != redis_cluster.node_of_slot(
        key_slot(b"{other}")
    )
    first = tasks.add.enqueue(1, 2)
    second = tasks.add.using(backend="other").enqueue(3, 4)
    for alias, enqueued, value in (("default", first, 3), ("other", second, 7)):
        backend = task_backends[alias]
        leased = backend.acquire(timeout=2, worker_id="h:1:t")
        assert leased.id == enqueued.id
        object.__setattr__(leased, "status", TaskResultStatus.SUCCESSFUL)
        object.__setattr__(leased, "_return_value", value)
        assert backend.acknowledge(leased)
        assert backend.get_result(enqueued.id).return_value == value

    holders = {}
    for node in redis_cluster.nodes:
        client = redis.Redis(port=node.port)
        for alias in ("default", "other"):
            if client.keys(f"{key_prefix}:{{{alias}}}:*"):
                holders.setdefault(alias, set()).add(node.port)
    assert len(holders["default"]) == 1
    assert len(holders["other"]) == 1
    assert holders["default"] != holders["other"]


def test_while_the_slot_moves_the_alias_pauses_and_nothing_is_half_done(
    settings, redis_cluster, key_prefix
):
    settings.TASKS = redis_tasks_setting_for(redis_cluster.url, key_prefix, cluster=True)
    backend = task_backends["default"]
    first, second = tasks.add.enqueue(1, 2), tasks.add.enqueue(3, 4)
    leased = backend.acquire(timeout=2, worker_id="h:1:t")
    assert leased.id == first.id
    object.__setattr__(leased, "status", TaskResultStatus.SUCCESSFUL)
    object.__setattr__(leased, "_return_value", 3)
    slot = key_slot(b"{default}")
    source = redis.Redis(port=redis_cluster.node_of_slot(slot))
    # To the master that serves neither alias of the test above, and back at the end.
    taken = (redis_cluster.node_of_slot(slot), redis_cluster.node_of_slot(key_slot(b"{other}")))
    target = redis.Redis(port=next(n.port for n in redis_cluster.nodes if n.port not in taken))
    _begin_move(slot, source, target)
    try:
        # The leased task's hash moves first; its queue's sorted sets are still on the source.
        _migrate(source, target, [backend.task_key(first.id)])

        with pytest.raises(redis.RedisError):
            backend.acknowledge(leased)
        with pytest.raises(redis.RedisError):
            backend.acquire(timeout=0, worker_id="h:1:t")
        ready, _, running, _ = backend.queue_keys("default")
        assert source.zrange(running, 0, -1) == [first.id.encode()]  # the lease is untouched
        assert source.zrange(ready, 0, -1) == [second.id.encode()]  # nothing was popped
    finally:
        _finish_move(slot, source, target, redis_cluster)

    assert backend.acknowledge(leased)
    assert backend.get_result(first.id).return_value == 3
    assert backend.acquire(timeout=2, worker_id="h:1:t").id == second.id
    _begin_move(slot, target, source)
    _finish_move(slot, target, source, redis_cluster)


def _begin_move(slot: int, source: redis.Redis, target: redis.Redis) -> None:
    """Start moving `slot` as `redis-cli --cluster reshard` does: importing, then migrating."""
    target.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", _node_id(source))
    source.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", _node_id(target))


def _finish_move(slot: int, source: redis.Redis, target: redis.Redis, cluster) -> None:
    """Move the slot's remaining keys, then give the slot to the target on every master."""
    while keys := source.execute_command("CLUSTER GETKEYSINSLOT", slot, 100):
        _migrate(source, target, keys)
    for node in cluster.nodes:
        redis.Redis(port=node.port).execute_command(
            "CLUSTER SETSLOT", slot, "NODE", _node_id(target)
        )


def _migrate(source: redis.Redis, target: redis.Redis, keys: list) -> None:
    port = target.connection_pool.connection_kwargs["port"]
    source.execute_command("MIGRATE", "127.0.0.1", port, "", 0, 5000, "KEYS", *keys)


def _node_id(client: redis.Redis) -> bytes:
    return client.execute_command("CLUSTER MYID")
