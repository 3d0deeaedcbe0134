"""Logging for the Django peers: no log line per task, as every peer of the benchmark runs
(Huey `-q`, Celery `-l WARNING`, `db_worker -v 0`). Django's own task_started / task_finished
receivers log each task at INFO on `django.tasks`; with Django's default configuration those
records are built and then dropped, which costs tens of microseconds per task."""

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
        "threadmill": {"handlers": ["console"], "level": "WARNING"},
        "django.tasks": {"level": "WARNING"},
    },
}
