"""A small chaos run: killed workers, a killed Redis, stopped and killed pools; nothing lost."""

import pytest

from tests.acceptance.settings import POOL_OPTIONS
from tests.chaos import Plan, run
from tests.conftest import redis_tasks_setting_for
from tests.servers import RedisServer


@pytest.fixture
def durable_redis():
    server = RedisServer(appendonly=True).start()
    yield server
    server.stop()


def test_every_task_ends_with_exactly_one_result_through_chaos(
    durable_redis, key_prefix, settings, tmp_path
):
    settings.TASKS = redis_tasks_setting_for(durable_redis.url, key_prefix, **POOL_OPTIONS)
    plan = Plan(
        tasks=600,
        processes=2,
        threads=2,
        worker_kill_interval=0.7,
        redis_kills=1,
        pool_restarts=1,
        pool_deaths=1,
        event_interval=1.5,
        quiescence_timeout=120,
    )
    report = run(plan, durable_redis, key_prefix, tmp_path, say=lambda line: None)
    print(report.table())
    assert report.lost == 0
    assert report.stuck == 0
    assert sum(report.statuses.values()) == 600
    assert report.succeeded_without_execution == 0
    assert report.duplicates_unexplained == 0
    assert any("Redis SIGKILL" in event for event in report.events)
    assert any("whole pool SIGKILL" in event for event in report.events)
