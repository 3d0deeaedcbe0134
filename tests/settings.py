"""Settings for the test suite; the servers' addresses come from the environment."""

import os
import tempfile
from pathlib import Path

SECRET_KEY = "threadmill-tests"
USE_TZ = True
INSTALLED_APPS = ["threadmill"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# A directory of this test session's own, inherited by the processes it starts (the pools of
# the acceptance tests), so they all open the same SQLite file and never another session's.
if "THREADMILL_TEST_DB_DIR" not in os.environ:
    os.environ["THREADMILL_TEST_DB_DIR"] = tempfile.mkdtemp(prefix="threadmill-tests-")
_db_dir = Path(os.environ["THREADMILL_TEST_DB_DIR"])
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(_db_dir / "threadmill-tests.sqlite3"),
    },
    # The session's own PostgreSQL server (tests.servers.PostgresServer) sets the port when it
    # starts, here and in the environment of the processes the tests start.
    "postgres": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("THREADMILL_TEST_POSTGRES_DB", "threadmill"),
        "USER": os.environ.get("THREADMILL_TEST_POSTGRES_USER", "postgres"),
        "HOST": os.environ.get("THREADMILL_TEST_POSTGRES_HOST", "127.0.0.1"),
        "PORT": os.environ.get("THREADMILL_TEST_POSTGRES_PORT", "5432"),
    },
}

TASKS = {
    "default": {
        "BACKEND": "threadmill.backends.redis.RedisTaskBackend",
        "REDIS_URL": os.environ.get("THREADMILL_TEST_REDIS_URL", "redis://127.0.0.1:6399/0"),
        "QUEUES": ["default", "high", "low"],
        "OPTIONS": {"key_prefix": os.environ.get("THREADMILL_TEST_KEY_PREFIX", "threadmill")},
    }
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"threadmill": {"handlers": ["console"], "level": "INFO"}},
}
