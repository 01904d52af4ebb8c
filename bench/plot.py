"""``bench/results/throughput.png``: lockstep steps/s against concurrent sessions for the
three servers, log-x, from the run's JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench.records import LOCKSTEP, SERVERS, Record

STYLE = {"echo": ("tab:gray", "s", "--"), "baseline": ("tab:orange", "^", "-"),
         "rnnserve": ("tab:blue", "o", "-")}  # fmt: skip
LABELS = {
    "echo": "echo, no model (transport ceiling)",
    "baseline": "grpc.aio + onnxruntime, batch 1 (baseline)",
    "rnnserve": "rnnserve",
}


def write_plot(result: dict[str, Any], path: Path) -> None:
    records = [Record.from_json(r) for r in result["records"]]
    figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
    concurrencies: set[int] = set()
    for system in SERVERS:
        points = sorted(
            (r.concurrency, r.steps_per_s)
            for r in records
            if r.system == system
            and r.scenario == LOCKSTEP
            and r.concurrency is not None
            and r.steps_per_s is not None
            and r.error is None
        )
        if not points:
            continue
        concurrencies.update(p[0] for p in points)
        colour, marker, line = STYLE[system]
        axes.plot(
            [p[0] for p in points],
            [p[1] for p in points],
            marker=marker,
            linestyle=line,
            color=colour,
            label=LABELS[system],
        )
    axes.set_xscale("log", base=2)
    ticks = sorted(concurrencies)
    axes.set_xticks(ticks, labels=[str(n) for n in ticks])
    axes.minorticks_off()
    axes.set_xlabel("concurrent lockstep sessions (one StepStream each)")
    axes.set_ylabel("steps/s (all sessions)")
    axes.set_ylim(bottom=0)
    machine = result["machine"]
    axes.set_title(
        f"{result['model']['cell']} {result['model']['layers']}x{result['model']['hidden_size']}, "
        f"{machine['nproc']} cores shared by client and server, {result['started'][:10]}",
        fontsize=10,
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
