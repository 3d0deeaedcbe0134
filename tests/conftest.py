import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from django.tasks import task_backends

from tests.servers import RedisServer

# Every kind of backend the contract suite runs against; each has a `<kind>_tasks_setting`
# fixture below (or in a conftest near its tests) returning a TASKS setting.
BACKEND_KINDS = ["redis", "redis_cluster", "sqlite", "postgres"]

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


# --- the database backend ----------------------------------------------------------------
# The SQLite database is the "default" alias (a file in this session's own directory); the
# PostgreSQL one is the "postgres" alias, whose server the session starts on first use. The
# tests reach them outside pytest-django's test databases, so processes they start (pools)
# open the very same databases; each test begins with empty tables instead.


def database_tasks_setting_for(database: str, **options) -> dict:
    return {
        "default": {
            "BACKEND": "threadmill.backends.database.DatabaseTaskBackend",
            "QUEUES": QUEUES,
            "OPTIONS": {"database": database, **options},
        }
    }


def _migrated(database: str, django_db_blocker) -> str:
    from django.core.management import call_command
    from django.db import connections

    with django_db_blocker.unblock():
        call_command("migrate", "threadmill", database=database, verbosity=0)
        connections[database].close()
    return database


@contextmanager
def _emptied(database: str, django_db_blocker) -> Iterator[None]:
    """Give a test empty tables, then close this thread's connection: later tests without
    database access would otherwise find it open (and pytest-django refuses to touch it)."""
    from django.db import connections

    from threadmill.models import PoolHeartbeat, TaskRecord

    with django_db_blocker.unblock():
        TaskRecord.objects.using(database).all().delete()
        PoolHeartbeat.objects.using(database).all().delete()
        try:
            yield
        finally:
            connections.close_all()  # the backend's own worker connections too


@pytest.fixture(scope="session")
def sqlite_database(django_db_blocker) -> str:
    """The DATABASES alias of the session's SQLite database, migrated."""
    return _migrated("default", django_db_blocker)


@pytest.fixture(scope="session")
def postgres_server():
    from tests.servers import PostgresServer

    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_database(postgres_server, django_db_blocker) -> str:
    """The DATABASES alias of the session's PostgreSQL database, migrated."""
    from django.conf import settings as django_settings
    from django.db import connections

    # Django's connection handler shares these dicts; update every copy that may exist.
    for entry in (django_settings.DATABASES["postgres"], connections["postgres"].settings_dict):
        entry.update(postgres_server.settings)
    os.environ["THREADMILL_TEST_POSTGRES_PORT"] = str(postgres_server.port)
    return _migrated("postgres", django_db_blocker)


@pytest.fixture
def sqlite_tasks_setting(sqlite_database, django_db_blocker):
    with _emptied(sqlite_database, django_db_blocker):
        yield database_tasks_setting_for(sqlite_database)


@pytest.fixture
def postgres_tasks_setting(postgres_database, django_db_blocker):
    with _emptied(postgres_database, django_db_blocker):
        yield database_tasks_setting_for(postgres_database)
