"""System checks that need `manage.py check --deploy` (Django's task checks never see it)."""

from collections.abc import Iterable
from typing import Any

from django.core import checks


@checks.register(deploy=True)
def check_backend_durability(
    app_configs: Any = None, **kwargs: Any
) -> Iterable[checks.CheckMessage]:
    """Warn about task backends whose server can lose acknowledged work."""
    from django.tasks import task_backends

    for backend in task_backends.all():
        durability_check = getattr(backend, "check_durability", None)
        if durability_check is not None:
            yield from durability_check()
