"""threadmill's database backend on SQLite."""

from peers.settings_threadmill import *  # noqa: F403
from peers.sqlite import databases

DATABASES = databases()
TASKS = {
    "default": {
        "BACKEND": "threadmill.backends.database.DatabaseTaskBackend",
        "QUEUES": ["default"],
    }
}
