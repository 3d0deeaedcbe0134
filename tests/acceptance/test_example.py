"""The README's first command: the example project's demo, on SQLite, from nothing."""

import subprocess
import sys
from pathlib import Path

from tests.servers import environment

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_creates_its_database_runs_a_mixed_workload_and_sums_it_up(tmp_path):
    completed = subprocess.run(
        [sys.executable, "example/manage.py", "demo", "--orders", "20", "--processes", "2"],
        cwd=ROOT,
        env=environment(
            DJANGO_SETTINGS_MODULE="example_project.settings",
            EXAMPLE_DATABASE=str(tmp_path / "example.sqlite3"),
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    out = completed.stdout
    assert "81/81 tasks ended" in out
    assert "succeeded: 79" in out  # 20 orders x 4 tasks + the report, less 2 declined cards
    assert "failed:    2 (2 PaymentDeclined)" in out
    assert "retried:   7" in out  # orders 0, 3, ..., 18: the mail server was busy once
