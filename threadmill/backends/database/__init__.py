"""The database backend: `threadmill.backends.database.DatabaseTaskBackend`."""

from threadmill.backends.database.backend import DatabaseTaskBackend

__all__ = ["DatabaseTaskBackend"]
