"""Wrong input to `manage.py threadmill` stops at once with a CommandError naming it."""

import pytest
from django.core.management import CommandError, call_command

from tests.conftest import redis_tasks_setting_for


@pytest.fixture(autouse=True)
def tasks_setting(settings):
    # No server is needed: every check here runs before the pool would connect.
    settings.TASKS = {
        **redis_tasks_setting_for("redis://127.0.0.1:1/0", "unit", lease_ttl=60),
        "immediate": {"BACKEND": "django.tasks.backends.immediate.ImmediateBackend"},
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--processes", "0"], "--processes must be at least 1"),
        (["--threads", "0"], "--threads must be at least 1"),
        (["--prefetch", "-1"], "--prefetch must be at least 0"),
        (["--max-tasks", "0"], "--max-tasks must be at least 1"),
        (["--graceful-timeout", "0"], "--graceful-timeout must be positive"),
        (["--timeout", "60"], "must be shorter than the lease_ttl"),
        (["--queues", "default", "nope"], "Unknown queue 'nope'"),
        (["--backend", "missing"], "Unknown task backend 'missing'"),
        (["--backend", "immediate"], "not an AcknowledgeableTaskBackend"),
    ],
)
def test_wrong_input_stops_with_a_command_error_naming_the_problem(args, message):
    with pytest.raises(CommandError, match=message):
        call_command("threadmill", *args)
