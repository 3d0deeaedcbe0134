"""`manage.py threadmill`: run a pool of worker processes for an acknowledgeable task backend."""

import os
from argparse import ArgumentParser
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.tasks import task_backends
from django.tasks.exceptions import InvalidTaskBackend

from threadmill.backends.base import AcknowledgeableTaskBackend
from threadmill.pool import Arbiter, PoolConfig
from threadmill.pool.config import WORKER_BOOT_ERROR
from threadmill.pool.logs import configure

# Tasks leased ahead per worker process, beyond one per thread (see README, "The pool").
DEFAULT_PREFETCH = 16


class Command(BaseCommand):
    help = "Run a pool of worker processes that execute the tasks of a threadmill backend."
    requires_system_checks: list[str] = []  # the backend is checked below, by name

    def add_arguments(self, parser: ArgumentParser) -> None:
        parser.add_argument(
            "-w", "--processes", "--workers", dest="processes", type=int,
            default=os.cpu_count() or 1, help="Worker processes (default: the number of CPUs).",
        )  # fmt: skip
        parser.add_argument(
            "-t", "--threads", type=int, default=1,
            help="Tasks run at once per worker process, one thread each (default: 1).",
        )  # fmt: skip
        parser.add_argument(
            "--prefetch", type=int, default=DEFAULT_PREFETCH,
            help=f"Tasks leased ahead per worker process (default: {DEFAULT_PREFETCH}).",
        )  # fmt: skip
        parser.add_argument(
            "--max-tasks", type=int, default=None,
            help="Recycle a worker process after this many tasks (all its threads together).",
        )  # fmt: skip
        parser.add_argument(
            "--max-tasks-jitter", type=int, default=0,
            help="Add randint(0, N) to --max-tasks, so processes do not all recycle at once.",
        )  # fmt: skip
        parser.add_argument(
            "--max-memory", type=int, default=None, metavar="MB",
            help="Recycle a worker process after the task during which its RSS passed MB.",
        )  # fmt: skip
        parser.add_argument(
            "--timeout", type=float, default=None, metavar="SECONDS",
            help="Timeout of tasks that set none (default: the backend's lease_ttl).",
        )  # fmt: skip
        parser.add_argument(
            "--graceful-timeout", type=float, default=30.0, metavar="SECONDS",
            help="How long a stop waits for running tasks before killing (default: 30).",
        )  # fmt: skip
        parser.add_argument(
            "--heartbeat-timeout", type=float, default=30.0, metavar="SECONDS",
            help="Kill a worker process silent for this long: stuck in C (default: 30).",
        )  # fmt: skip
        parser.add_argument(
            "--exit-empty", action="store_true",
            help="Exit once no task is ready or running in the queues.",
        )  # fmt: skip
        parser.add_argument(
            "-q", "--queues", nargs="+", default=None, metavar="NAME",
            help="Queues to run tasks from (default: every queue of the backend).",
        )  # fmt: skip
        parser.add_argument(
            "-b", "--backend", default="default", metavar="ALIAS",
            help="Alias of the task backend in TASKS (default: 'default').",
        )  # fmt: skip
        parser.add_argument(
            "--log-format", choices=["text", "json"], default="text",
            help="'json' writes one JSON object per log line.",
        )  # fmt: skip

    def handle(self, *args: Any, **options: Any) -> None:
        backend = self._backend(options["backend"])
        config = self._config(backend, options)
        configure(config.log_format)
        arbiter = Arbiter(config, backend)
        code = arbiter.run()
        if code == WORKER_BOOT_ERROR:
            raise CommandError(
                f"Worker processes failed to boot; the last reason:\n{arbiter.halt_reason}",
                returncode=code,
            )
        if code:
            raise CommandError("The pool stopped on an error (see the log).", returncode=code)

    def _backend(self, alias: str) -> AcknowledgeableTaskBackend:
        try:
            backend = task_backends[alias]
        except InvalidTaskBackend as error:
            raise CommandError(f"Unknown task backend {alias!r}: {error}") from error
        if not isinstance(backend, AcknowledgeableTaskBackend):
            raise CommandError(
                f"Task backend {alias!r} is a {type(backend).__name__}, not an "
                "AcknowledgeableTaskBackend: threadmill cannot lease its tasks."
            )
        problems = getattr(backend, "option_problems", [])
        if problems:
            raise CommandError(f"TASKS[{alias!r}]['OPTIONS']: " + "; ".join(problems))
        return backend

    def _config(self, backend: AcknowledgeableTaskBackend, options: dict[str, Any]) -> PoolConfig:
        for name, least in [
            ("processes", 1),
            ("threads", 1),
            ("prefetch", 0),
            ("max_tasks", 1),
            ("max_tasks_jitter", 0),
            ("max_memory", 1),
        ]:
            value = options[name]
            if value is not None and value < least:
                flag = "--" + name.replace("_", "-")
                raise CommandError(f"{flag} must be at least {least}, not {value}.")
        for name in ("timeout", "graceful_timeout", "heartbeat_timeout"):
            value = options[name]
            if value is not None and not value > 0:
                raise CommandError(f"--{name.replace('_', '-')} must be positive, not {value}.")
        timeout = options["timeout"]
        if timeout is not None and timeout >= backend.lease_ttl:
            raise CommandError(
                f"--timeout ({timeout:g}s) must be shorter than the lease_ttl of backend "
                f"{backend.alias!r} ({backend.lease_ttl:g}s): a task would outlive its lease."
            )
        return PoolConfig(
            backend_alias=backend.alias,
            queues=self._queues(backend, options["queues"]),
            processes=options["processes"],
            threads=options["threads"],
            prefetch=options["prefetch"],
            max_tasks=options["max_tasks"],
            max_tasks_jitter=options["max_tasks_jitter"],
            max_memory=options["max_memory"] * 2**20 if options["max_memory"] else None,
            timeout=timeout,
            graceful_timeout=options["graceful_timeout"],
            heartbeat_timeout=options["heartbeat_timeout"],
            exit_empty=options["exit_empty"],
            log_format=options["log_format"],
        )

    @staticmethod
    def _queues(backend: AcknowledgeableTaskBackend, wanted: list[str] | None) -> tuple[str, ...]:
        # The order of the QUEUES setting, not of the backend's set, so logs read as configured.
        configured = list(settings.TASKS[backend.alias].get("QUEUES") or sorted(backend.queues))
        if wanted is None:
            return tuple(configured)
        unknown = [name for name in wanted if name not in backend.queues]
        if unknown:
            raise CommandError(
                f"Unknown queue {', '.join(map(repr, unknown))} for backend {backend.alias!r} "
                f"(its queues: {', '.join(configured)})."
            )
        return tuple(dict.fromkeys(wanted))
