"""The benchmark's threadmill part, tiny: it must keep running (the full run is not in CI)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMAND = ROOT / "threadmill" / "management" / "commands" / "threadmill.py"


@pytest.mark.skipif(not COMMAND.exists(), reason="the pool command does not exist yet")
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
@pytest.mark.timeout(90)
def test_benchmark_drains_tasks_with_threadmill_and_reports_a_throughput(tmp_path):
    raw = tmp_path / "results.json"
    subprocess.run(
        [
            sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--peers", "threadmill",
            "--tasks", "200", "--runs", "1", "--figures", "throughput", "--no-chart",
            "--output", str(tmp_path), "--json", str(raw),
        ],
        cwd=ROOT, check=True, timeout=80, capture_output=True,
    )  # fmt: skip
    report = json.loads(raw.read_text())
    noop = report["peers"]["threadmill"]["runs"][0]["noop"]
    assert noop["complete"], noop
    assert noop["throughput"] > 0
    assert noop["enqueue_rate"] > 0
    floors = report["calibration"]["floors"]
    assert floors["body"]["rate"] > floors["execute"]["rate"] > 0  # a Django task costs more
    assert 0 < floors["wake"]["p50_ms"] <= floors["wake"]["p95_ms"]
    # A smoke run's few loops are too short to compare one floor with another: each is there.
    assert floors["queue_loop"]["rate"] > 0 and floors["queue_loop"]["user_us"] > 0
    assert floors["queue_loop_2_threads"]["rate"] > 0 and floors["queue_loop_4_threads"]["rate"] > 0
    assert 0 < floors["django_wake"]["p50_ms"] <= floors["django_wake"]["p95_ms"]
    assert floors["queue_scaling"]["two"] > 0 and floors["push_enqueue"]["rate"] > 0
    assert report["calibration"]["measurements"] == 2
    markdown = (tmp_path / "benchmark.md").read_text()
    assert "| threadmill |" in markdown
    assert "the task body alone (one INCR), in a bare loop" in markdown
    assert "no-op tasks drained by the least Redis queue" in markdown
    assert "the same, 4 threads of one process" in markdown
    assert "in two side by side" in markdown
