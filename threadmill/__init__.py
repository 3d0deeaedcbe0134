"""threadmill: a durable, fast worker pool for Django's task framework."""

__version__ = "0.1.0"
