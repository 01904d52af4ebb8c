"""The run's record: one JSON line per training step and per evaluation, a plot of the
training and validation loss next to it, and a classifier's confusion matrix."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")  # files only; no display
import matplotlib.pyplot as plt

LN2 = math.log(2.0)
PLOT_FILE = "loss.png"


def bits(nats: float) -> float:
    return nats / LN2


class MetricsLog:
    """``metrics.jsonl`` (appended per step and per evaluation) and ``loss.png`` in the run
    directory. ``loss_key`` names the validation loss in the training loss's units (bits
    per prediction); ``metric_key`` the task's main validation metric, plotted on its own
    axis when it is not that loss (accuracy, exact match)."""

    def __init__(
        self,
        run_dir: Path,
        *,
        append: bool = False,
        loss_key: str = "val_bits_per_char",
        metric_key: str = "val_bits_per_char",
    ) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.loss_key, self.metric_key = loss_key, metric_key
        self.plot_path = run_dir / PLOT_FILE
        self.train_curve: list[tuple[int, float]] = []
        self.val_curves: dict[str, list[tuple[int, float]]] = {loss_key: [], metric_key: []}
        if append and self.path.exists():  # a resumed run: keep the earlier evaluations
            for line in self.path.read_text(encoding="utf-8").splitlines():
                entry = json.loads(line)
                if "step_bits" in entry:
                    self.train_curve.append((int(entry["step"]), float(entry["step_bits"])))
                else:
                    self._add_evaluation(entry)
        else:
            self.path.write_text("", encoding="utf-8")

    def _add_evaluation(self, entry: dict[str, Any]) -> None:
        if entry.get("final"):
            return
        for key, curve in self.val_curves.items():
            if key in entry:
                curve.append((int(entry["step"]), float(entry[key])))

    def train_step(self, step: int, train_bits: float, lr: float) -> None:
        """One optimiser step: its loss in bits per prediction, one JSON line."""
        self.train_curve.append((step, train_bits))
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, "step_bits": train_bits, "lr": lr}) + "\n")

    def record(self, entry: dict[str, Any]) -> None:
        self._add_evaluation(entry)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def plot(self, title: str) -> None:
        """Training loss (per step, smoothed) and validation loss, in bits per
        prediction; the main metric on a second axis if it is no loss."""
        fig, ax = plt.subplots(figsize=(7, 4))
        if self.train_curve:
            steps, values = zip(*self.train_curve, strict=True)
            ax.plot(steps, _smooth(list(values)), label="train loss (smoothed)", linewidth=1)
        if self.val_curves[self.loss_key]:
            steps, values = zip(*self.val_curves[self.loss_key], strict=True)
            ax.plot(steps, values, "o-", color="C1", label=f"validation loss ({self.loss_key})")
        ax.set_xlabel("step")
        ax.set_ylabel("bits per prediction")
        if self.metric_key != self.loss_key and self.val_curves[self.metric_key]:
            other = ax.twinx()
            steps, values = zip(*self.val_curves[self.metric_key], strict=True)
            other.plot(steps, values, "s--", color="C2", label=self.metric_key)
            other.set_ylabel(self.metric_key)
            other.legend(loc="center right")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right")
        fig.tight_layout()
        fig.savefig(self.plot_path, dpi=100)
        plt.close(fig)


def plot_confusion(
    truth: np.ndarray, predicted: np.ndarray, classes: Sequence[str], path: Path, title: str
) -> None:
    """The confusion matrix of a classifier, each row (true class) normalised to 1, with
    the count of every non-empty cell."""
    counts = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(counts, (truth, predicted), 1)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = 0.45 * len(classes) + 2
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0)
    for (row, column), count in np.ndenumerate(counts):
        if count:
            color = "white" if rates[row, column] > 0.5 else "black"
            ax.text(column, row, str(count), ha="center", va="center", fontsize=7, color=color)
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=90)
    ax.set_yticks(ticks, classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (row: share of that class)")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _smooth(values: list[float], weight: float = 0.9) -> list[float]:
    out, running = [], values[0]
    for v in values:
        running = weight * running + (1 - weight) * v
        out.append(running)
    return out
