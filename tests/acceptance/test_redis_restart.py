"""Redis killed with SIGKILL mid-run and restarted: the pool rides it out and loses nothing."""

import time
from collections import Counter

from django.tasks import TaskResultStatus

from tests.acceptance.settings import POOL_OPTIONS
from tests.chaos import ChaosPool, pool_environment
from tests.chaos_tasks import timed
from tests.conftest import redis_tasks_setting_for
from tests.servers import RedisServer, wait_for


def test_a_redis_outage_longer_than_the_clients_retries_loses_no_task_and_no_result(
    key_prefix, settings, tmp_path
):
    redis = RedisServer(appendonly=True).start()
    settings.TASKS = redis_tasks_setting_for(redis.url, key_prefix, **POOL_OPTIONS)
    from django.tasks import task_backends

    backend = task_backends["default"]
    log_path = tmp_path / "executions.log"
    env = pool_environment(redis.url, key_prefix, tmp_path)
    ids = [timed.enqueue(0.5).id for _ in range(12)]
    pool = ChaosPool(0, ["--processes", "1", "--threads", "3"], env, tmp_path)
    try:
        wait_for(log_path.exists, timeout=30, what="the first task to start")
        redis.kill()
        # Down for longer than the client's own retries (about 9 s): tasks finish meanwhile,
        # and their results must be held by the pool, not dropped.
        time.sleep(12)
        redis.start()
        wait_for(
            lambda: sum(backend.count_pending().values()) == 0,
            timeout=60,
            what="every task to finish after Redis came back",
        )
        assert pool.process.poll() is None, "the pool died while Redis was away"
        statuses = [backend.get_result(i).status for i in ids]
    finally:
        pool.terminate()
        redis.stop()

    assert statuses == [TaskResultStatus.SUCCESSFUL] * 12
    starts = Counter(
        line.split()[1] for line in log_path.read_text().splitlines() if line[0] == "S"
    )
    assert starts == Counter({task_id: 1 for task_id in ids}), "a task ran twice"
    log = "".join(p.read_text() for p in tmp_path.glob("pool-*.log"))
    assert "holding it" in log  # results finished during the outage were held and resent
