"""threadmill's database backend on PostgreSQL."""

from peers import postgres
from peers.settings_threadmill_db import *  # noqa: F403

DATABASES = postgres.databases()
