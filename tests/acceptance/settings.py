"""Settings of the pools the acceptance tests start: fast maintenance, a short lease."""

import os

from tests.settings import *  # noqa: F403

POOL_OPTIONS = {
    "broker_interval": 0.2,
    "pool_ttl": 5.0,
    "lease_ttl": float(os.environ.get("THREADMILL_TEST_LEASE_TTL", "60")),
}

TASKS = {
    "default": {
        "BACKEND": "threadmill.backends.redis.RedisTaskBackend",
        "REDIS_URL": os.environ.get("THREADMILL_TEST_REDIS_URL", "redis://127.0.0.1:6399/0"),
        "QUEUES": ["default", "high", "low"],
        "OPTIONS": {
            "key_prefix": os.environ.get("THREADMILL_TEST_KEY_PREFIX", "threadmill"),
            **POOL_OPTIONS,
        },
    },
    "immediate": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"},
}
