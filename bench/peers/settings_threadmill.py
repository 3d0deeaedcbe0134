"""threadmill on the benchmark's Redis."""

import os

from peers.quiet import LOGGING  # noqa: F401

SECRET_KEY = "threadmill-bench"
USE_TZ = True
INSTALLED_APPS = ["threadmill"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = {}
TASKS = {
    "default": {
        "BACKEND": "threadmill.backends.redis.RedisTaskBackend",
        "REDIS_URL": os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"),
        "QUEUES": ["default"],
    }
}
