"""What ``rnnserve-train zoo`` shows while it trains.

On a terminal: one progress bar per model in training (its step and phase, read from the
mark it keeps in the repository, ``rnnserve_server.trainingmarks``) and a line for every
model written (a server polling the repository serves it from then on). Anywhere else
(a log file, CI): a plain line every ``PLAIN_S`` seconds, no carriage returns.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import TracebackType
from typing import TextIO

from tqdm import tqdm

from rnnserve_server.trainingmarks import read_mark

TERMINAL_S = 0.5  # how often the bars are redrawn
PLAIN_S = 30.0  # how often a plain line is written


class ZooProgress:
    def __init__(
        self, out: Path, names: list[str], stream: TextIO, interval: float | None = None
    ) -> None:
        """``interval``: seconds between redraws or plain lines (TERMINAL_S or PLAIN_S)."""
        self.out, self.stream = out, stream
        self.terminal = stream.isatty()
        self.interval = interval or (TERMINAL_S if self.terminal else PLAIN_S)
        self.state = dict.fromkeys(names, "waiting")
        self.bars: dict[str, tqdm] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zoo-progress", daemon=True)

    def __enter__(self) -> ZooProgress:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        with self._lock:
            for bar in self.bars.values():
                bar.close()

    def started(self, name: str) -> None:
        with self._lock:
            self.state[name] = "training"
            if self.terminal:
                self.bars[name] = tqdm(
                    desc=f"{name:<15}", total=1, unit="step", file=self.stream, leave=False
                )

    def finished(self, name: str, status: str) -> None:
        with self._lock:
            bar = self.bars.pop(name, None)
            if bar is not None:
                bar.close()
            self.state[name] = "written" if status == "trained" else status
            self._write(
                f"{name}: written to {self.out / name} (a server polling the repository "
                "serves it now)"
                if status == "trained"
                else f"{name}: {status}"
            )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                if self.terminal:
                    self._redraw()
                else:
                    self._write(self.summary())

    def _redraw(self) -> None:
        for name, bar in self.bars.items():
            mark = read_mark(self.out / name)
            if mark is not None:
                bar.total, bar.n = max(mark.steps, 1), mark.step
                bar.set_postfix_str(mark.phase, refresh=False)
                bar.refresh()

    def summary(self) -> str:
        """One line: the models training (with their progress), written, waiting."""
        parts = []
        training = []
        for name, state in self.state.items():
            if state == "training":
                mark = read_mark(self.out / name)
                training.append(f"{name} {mark.describe()}" if mark else f"{name} starting")
        if training:
            parts.append("training " + "; ".join(training))
        for label in ("written", "waiting"):
            names = [n for n, s in self.state.items() if s == label]
            if names:
                parts.append(f"{label}: {', '.join(names)}")
        return "zoo: " + " | ".join(parts)

    def _write(self, line: str) -> None:
        if self.terminal:
            tqdm.write(line, file=self.stream)
        else:
            print(line, file=self.stream, flush=True)
