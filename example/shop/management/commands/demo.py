"""Run a mixed workload through threadmill on SQLite, and say how it went."""

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

from django.core.management import call_command
from django.core.management.base import BaseCommand
from django.tasks import TaskResultStatus, default_task_backend
from django.utils import timezone

from shop import tasks


class Command(BaseCommand):
    help = (
        "Create the database, enqueue a mixed workload (CPU-bound, I/O-bound, failing, "
        "retried and scheduled tasks) and run the pool until every task has ended."
    )

    def add_arguments(self, parser):
        parser.add_argument("--orders", type=int, default=250, help="Orders to process.")
        parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
        parser.add_argument("--threads", type=int, default=4)

    def handle(self, *args, orders: int, processes: int, threads: int, **options):
        call_command("migrate", verbosity=0)
        backend = default_task_backend
        started = time.monotonic()
        ids = []
        for order in range(orders):
            ids.append(tasks.make_thumbnail.enqueue(order).id)
            ids.append(tasks.fetch_exchange_rate.enqueue("EUR").id)
            ids.append(tasks.charge_card.enqueue(order, 1999).id)
            ids.append(tasks.send_receipt.enqueue(order).id)
        report_due = timezone.now() + timedelta(seconds=2)
        ids.append(tasks.nightly_report.using(run_after=report_due).enqueue("today").id)
        self.stdout.write(
            f"Enqueued {len(ids)} tasks in {time.monotonic() - started:.1f}s; "
            f"running a pool of {processes} processes x {threads} threads"
        )

        manage_py = Path(sys.argv[0]).resolve()
        pool = subprocess.Popen(
            [sys.executable, str(manage_py), "threadmill", "-w", str(processes), "-t", str(threads)]
        )
        started = time.monotonic()
        try:
            while (left := sum(backend.count_pending().values())) > 0:
                self._progress(len(ids) - left, len(ids))
                if pool.poll() is not None:
                    self.stderr.write(f"\nThe pool exited early with code {pool.returncode}.")
                    return
                time.sleep(0.2)
            elapsed = time.monotonic() - started
            self._progress(len(ids), len(ids))
        finally:
            pool.send_signal(signal.SIGTERM)
            pool.wait()
        self._summary(backend, ids, elapsed)

    def _progress(self, done: int, total: int) -> None:
        width = 40
        filled = width * done // total
        self.stdout.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} tasks ended", ending=""
        )
        self.stdout.flush()

    def _summary(self, backend, ids: list[str], elapsed: float) -> None:
        results = [backend.get_result(task_id) for task_id in ids]
        statuses = Counter(result.status for result in results)
        retried = sum(1 for result in results if result.attempts > 1)
        reasons = Counter(
            result.errors[-1].exception_class_path.rsplit(".", 1)[-1]
            for result in results
            if result.status == TaskResultStatus.FAILED
        )
        self.stdout.write("")
        self.stdout.write(f"{len(ids)} tasks in {elapsed:.1f}s: {len(ids) / elapsed:.0f} tasks/s")
        self.stdout.write(f"  succeeded: {statuses[TaskResultStatus.SUCCESSFUL]}")
        failed = statuses[TaskResultStatus.FAILED]
        why = ", ".join(f"{n} {reason}" for reason, n in reasons.items())
        self.stdout.write(f"  failed:    {failed}" + (f" ({why})" if why else ""))
        self.stdout.write(f"  retried:   {retried} (then succeeded or failed for good)")
