"""Backend-specific ways for the contract suite to reach under a backend's API."""

from threadmill.backends.base import AcknowledgeableTaskBackend
from threadmill.backends.database import DatabaseTaskBackend


def rewrite_payload(backend: AcknowledgeableTaskBackend, task_id: str, payload: bytes) -> None:
    """Overwrite a stored payload behind the backend's back, as an attacker with access could."""
    from threadmill.backends.redis import RedisTaskBackend

    if isinstance(backend, RedisTaskBackend):
        backend.client.hset(backend.task_key(task_id), "payload", payload)
        return
    if isinstance(backend, DatabaseTaskBackend):
        backend._tasks().filter(result_id=task_id).update(payload=payload.decode())
        return
    raise NotImplementedError(f"no way to rewrite a payload of {type(backend).__name__}")


def stored_status(backend: AcknowledgeableTaskBackend, task_id: str) -> str:
    """The status a backend stores for a task, read without building a TaskResult."""
    from threadmill.backends.redis import RedisTaskBackend

    if isinstance(backend, RedisTaskBackend):
        return backend.client.hget(backend.task_key(task_id), "status").decode()
    if isinstance(backend, DatabaseTaskBackend):
        return backend._tasks().values_list("status", flat=True).get(result_id=task_id)
    raise NotImplementedError(f"no way to read a status of {type(backend).__name__}")


def with_options(backend: AcknowledgeableTaskBackend, **options) -> AcknowledgeableTaskBackend:
    """A second backend on the same store as `backend`, with some options changed."""
    params = {
        "BACKEND": f"{type(backend).__module__}.{type(backend).__qualname__}",
        "QUEUES": sorted(backend.queues),
        "OPTIONS": {**backend.options, **options},
    }
    if hasattr(backend, "url"):
        params["REDIS_URL"] = backend.url
    return type(backend)(backend.alias, params)
