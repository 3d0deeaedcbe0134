"""django-tasks-db (its `db_worker`) on PostgreSQL."""

from peers import postgres
from peers.settings_dtdb import *  # noqa: F403

DATABASES = postgres.databases()
