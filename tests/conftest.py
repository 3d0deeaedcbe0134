import uuid

import pytest
from django.tasks import task_backends

from tests.servers import RedisServer

# Every kind of backend the contract suite runs against; each has a `<kind>_tasks_setting`
# fixture below (or in a conftest near its tests) returning a TASKS setting.
BACKEND_KINDS = ["redis", "redis_cluster"]

QUEUES = ["default", "high", "low"]


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture
def key_prefix() -> str:
    """A key prefix of this test's own, so tests sharing a Redis never see each other's keys."""
    return f"test-{uuid.uuid4().hex[:12]}"


def redis_tasks_setting_for(url: str, key_prefix: str, **options) -> dict:
    return {
        "default": {
            "BACKEND": "threadmill.backends.redis.RedisTaskBackend",
            "REDIS_URL": url,
            "QUEUES": QUEUES,
            "OPTIONS": {"key_prefix": key_prefix, **options},
        }
    }


@pytest.fixture
def redis_tasks_setting(redis_server, key_prefix):
    return redis_tasks_setting_for(redis_server.url, key_prefix)


@pytest.fixture(params=BACKEND_KINDS)
def backend(request, settings):
    """The default task backend, configured once for each kind of backend."""
    settings.TASKS = request.getfixturevalue(f"{request.param}_tasks_setting")
    yield task_backends["default"]


@pytest.fixture(scope="session")
def redis_cluster():
    from tests.redis_cluster import RedisCluster

    cluster = RedisCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster_tasks_setting(redis_cluster, key_prefix):
    return redis_tasks_setting_for(redis_cluster.url, key_prefix, cluster=True)
