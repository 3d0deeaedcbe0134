"""The worker pool behind `manage.py threadmill`: an arbiter and the worker processes it forks."""

from threadmill.pool.arbiter import Arbiter
from threadmill.pool.config import PoolConfig

__all__ = ["Arbiter", "PoolConfig"]
