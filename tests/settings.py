"""Settings for the test suite; the servers' addresses come from the environment."""

import os
import tempfile
from pathlib import Path

SECRET_KEY = "threadmill-tests"
USE_TZ = True
INSTALLED_APPS = ["threadmill"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_db_dir = Path(os.environ.get("THREADMILL_TEST_DB_DIR", tempfile.gettempdir()))
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": str(_db_dir / "threadmill-tests.sqlite3"),
    }
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
