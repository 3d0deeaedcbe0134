"""Draw docs/benchmark.png from one run's raw results; runs in bench/.envs/plot (matplotlib).

python bench/chart.py bench/results/<stamp>.json docs/benchmark.png
"""

# ruff: noqa: RUF001 - the table and the chart print typographic signs on purpose

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import FIGURES, stats

PANELS = [
    ("throughput", "No-op throughput, tasks/s\n(higher is better)", False),
    ("cpu", "Worker CPU per task, µs\n(lower is better; log scale)", True),
    ("p50", "Idle pickup p50, ms\n(lower is better; log scale)", True),
    (
        "overhead",
        "Overhead on 5 ms CPU tasks, µs/task, 2 processes\n(lower is better; log scale)",
        True,
    ),
    ("enqueue", "Enqueue rate, one thread, tasks/s\n(higher is better)", False),
    ("idle", "Idle Redis commands/s, one process\n(lower is better)", False),
]


def main(source: str, target: str) -> None:
    report = json.loads(Path(source).read_text())
    table = stats(report)
    figure, axes = plt.subplots(2, 3, figsize=(15, 8.5))
    for ax, (name, title, log) in zip(axes.flat, PANELS, strict=True):
        rows = [(peer, s[name]) for peer, s in table.items() if s.get(name)]
        labels = [peer for peer, _ in rows]
        medians = [s["median"] for _, s in rows]
        low = [s["median"] - s["min"] for _, s in rows]
        high = [s["max"] - s["median"] for _, s in rows]
        colours = [
            "#d1495b" if report["peers"][peer]["family"] == "threadmill" else "#8d99ae"
            for peer in labels
        ]
        ax.barh(labels, medians, xerr=[low, high], color=colours, capsize=3)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        if log:
            ax.set_xscale("log")
        digits = FIGURES[name][3]
        for y, (value, top) in enumerate(zip(medians, [s["max"] for _, s in rows], strict=True)):
            ax.annotate(
                f"{value:,.{digits}f}", (top, y), xytext=(4, 0),
                textcoords="offset points", va="center", fontsize=8,
            )  # fmt: skip
        ax.tick_params(axis="y", labelsize=8)
        ax.margins(x=0.3)
    machine = report["machine"]
    figure.suptitle(
        f"threadmill and its peers — {machine['cores']} cores, {machine['cpu']}, "
        f"Python {machine['python']}, Redis {machine['redis_server']} "
        f"(median of {report['args']['runs']} runs, bars: min–max)",
        fontsize=11,
    )
    figure.tight_layout()
    figure.savefig(target, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
