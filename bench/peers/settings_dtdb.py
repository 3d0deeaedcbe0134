"""django-tasks-db (its `db_worker`) on SQLite."""

from peers.quiet import LOGGING  # noqa: F401
from peers.sqlite import databases

SECRET_KEY = "threadmill-bench"
USE_TZ = True
INSTALLED_APPS = ["django_tasks_db"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
DATABASES = databases()
TASKS = {"default": {"BACKEND": "django_tasks_db.DatabaseBackend", "QUEUES": ["default"]}}
