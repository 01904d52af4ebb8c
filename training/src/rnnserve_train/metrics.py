"""The run's record: one JSON line per training step and per evaluation, and a loss
plot next to it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display
import matplotlib.pyplot as plt

LN2 = math.log(2.0)


def bits(nats: float) -> float:
    return nats / LN2


class MetricsLog:
    """``metrics.jsonl`` (appended per evaluation) and ``loss.png`` in the run directory."""

    def __init__(
        self, run_dir: Path, *, append: bool = False, val_key: str = "val_bits_per_char"
    ) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.val_key = val_key
        self.plot_path = run_dir / "loss.png"
        self.train_curve: list[tuple[int, float]] = []
        self.val_curve: list[tuple[int, float]] = []
        if append and self.path.exists():  # a resumed run: keep the earlier evaluations
            for line in self.path.read_text(encoding="utf-8").splitlines():
                entry = json.loads(line)
                if val_key in entry and not entry.get("final"):
                    self.val_curve.append((int(entry["step"]), float(entry[val_key])))
                if "step_bits" in entry:
                    self.train_curve.append((int(entry["step"]), float(entry["step_bits"])))
        else:
            self.path.write_text("", encoding="utf-8")

    def train_step(self, step: int, train_bits: float, lr: float) -> None:
        """One optimiser step: its loss in bits per prediction, one JSON line."""
        self.train_curve.append((step, train_bits))
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "step_bits": train_bits, "lr": lr}) + "\n")

    def record(self, entry: dict[str, Any]) -> None:
        if self.val_key in entry and not entry.get("final"):
            self.val_curve.append((int(entry["step"]), float(entry[self.val_key])))
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def plot(self, title: str) -> None:
        """Training loss (bits per prediction, smoothed) and the validation metric; a
        metric in other units than bits (accuracy, exact match) gets its own axis."""
        fig, ax = plt.subplots(figsize=(7, 4))
        if self.train_curve:
            steps, values = zip(*self.train_curve, strict=True)
            ax.plot(steps, _smooth(list(values)), label="train loss (smoothed)", linewidth=1)
        ax.set_xlabel("step")
        ax.set_ylabel("bits per prediction")
        if self.val_curve:
            steps, values = zip(*self.val_curve, strict=True)
            in_bits = "bits" in self.val_key
            target = ax if in_bits else ax.twinx()
            target.plot(steps, values, "o-", color="C1", label=self.val_key)
            if not in_bits:
                target.set_ylabel(self.val_key)
                target.legend(loc="center right")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right")
        fig.tight_layout()
        fig.savefig(self.plot_path, dpi=100)
        plt.close(fig)


def _smooth(values: list[float], weight: float = 0.9) -> list[float]:
    out, running = [], values[0]
    for v in values:
        running = weight * running + (1 - weight) * v
        out.append(running)
    return out
