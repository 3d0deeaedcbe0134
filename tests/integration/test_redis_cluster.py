"""The Redis backend on a real three-master Redis Cluster (the contract suite runs there too)."""

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
