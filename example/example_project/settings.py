"""A small shop that runs its background work on threadmill's embedded default: SQLite."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = "threadmill-example-not-secret"
DEBUG = False
USE_TZ = True
INSTALLED_APPS = ["threadmill", "shop"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("EXAMPLE_DATABASE", str(BASE_DIR / "example.sqlite3")),
        # Writers queue up behind each other instead of failing with "database is locked".
        "OPTIONS": {"timeout": 20},
    }
}

TASKS = {
    "default": {
        "BACKEND": "threadmill.backends.database.DatabaseTaskBackend",
        "QUEUES": ["default", "emails"],
        "OPTIONS": {"broker_interval": 0.5},
    }
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    # One line per task end is too much for the demo's progress display: warnings only.
    "loggers": {"threadmill": {"handlers": ["console"], "level": "WARNING"}},
}
