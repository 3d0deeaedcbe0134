"""Retry policies: callables from a failed attempt's context to the delay before the next one."""

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from django.tasks import TaskContext
from django.utils.module_loading import import_string


def backoff_delay(attempt: int, base_delay: float, factor: float, max_delay: float) -> float:
    """Return the delay in seconds before retry number `attempt` (1 for the first retry)."""
    return min(max_delay, base_delay * factor ** (attempt - 1))


@dataclass(frozen=True)
class ExponentialBackoff:
    """Retry a failed task after base_delay, base_delay*factor, ... up to max_delay.

    Gives up (returns None) after `max_retries` retries, or at once when the error is not one of
    `expected_exceptions` (classes, or their dotted paths; empty means every exception).
    """

    base_delay: timedelta = timedelta(seconds=1)
    max_delay: timedelta = timedelta(minutes=10)
    factor: float = 2.0
    max_retries: int = 5
    expected_exceptions: Iterable[type[BaseException] | str] = field(default=())

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be 0 or more.")
        if self.factor < 1:
            raise ValueError("factor must be 1 or more.")
        if self.base_delay < timedelta(0) or self.max_delay < self.base_delay:
            raise ValueError("need 0 <= base_delay <= max_delay.")
        object.__setattr__(self, "expected_exceptions", tuple(self.expected_exceptions))

    def __call__(self, context: TaskContext) -> timedelta | None:
        task_result = context.task_result
        retries_so_far = len(task_result.errors) - 1
        if retries_so_far >= self.max_retries:
            return None
        if self.expected_exceptions and not self._is_expected(task_result.errors[-1]):
            return None
        seconds = backoff_delay(
            retries_so_far + 1,
            self.base_delay.total_seconds(),
            self.factor,
            self.max_delay.total_seconds(),
        )
        return timedelta(seconds=seconds)

    def _is_expected(self, error) -> bool:
        try:
            raised = error.exception_class
        except (ImportError, ValueError):
            return False
        for expected in self.expected_exceptions:
            if isinstance(expected, str):
                try:
                    expected = import_string(expected)
                except ImportError:
                    continue
            if issubclass(raised, expected):
                return True
        return False
