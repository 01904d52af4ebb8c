"""Models still training: the mark a trainer keeps in the repository until it has written
the package, so that the server can say "still training" instead of "unknown model".

While it trains (and exports) a model into a repository, the trainer keeps
``<repository>/<name>/training.json`` and rewrites it every ``HEARTBEAT_S`` seconds with
its progress; it removes the mark when it ends, however it ends. A mark that has not been
rewritten for ``STALE_S`` seconds belongs to a trainer that died and is ignored. The
repository scan skips it (it is a file, not a version directory).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import TracebackType

MARK_FILE = "training.json"
HEARTBEAT_S = 5.0
STALE_S = 60.0


@dataclass(frozen=True)
class TrainingMark:
    """One model being trained into the repository."""

    name: str
    step: int  # optimiser steps done
    steps: int  # of this many
    phase: str  # "training", "evaluating" or "exporting"
    started: float  # Unix time
    updated: float  # Unix time of the last rewrite

    @property
    def progress(self) -> float:
        return self.step / self.steps if self.steps else 0.0

    def describe(self) -> str:
        return f"{self.phase}, step {self.step}/{self.steps} ({self.progress:.0%})"


def read_mark(directory: Path, now: float | None = None) -> TrainingMark | None:
    """The live mark in a model's directory ``<repository>/<name>``, or None (no mark, a
    stale one, or one that does not parse)."""
    try:
        data = json.loads((directory / MARK_FILE).read_text(encoding="utf-8"))
        mark = TrainingMark(**data)
    except (OSError, ValueError, TypeError):
        return None
    current = time.time() if now is None else now
    return mark if current - mark.updated <= STALE_S else None


def read_marks(root: Path) -> dict[str, TrainingMark]:
    """Every live mark of the repository ``root``, by model name."""
    marks = {}
    for path in sorted(root.glob(f"*/{MARK_FILE}")) if root.is_dir() else []:
        mark = read_mark(path.parent)
        if mark is not None:
            marks[mark.name] = mark
    return marks


class MarkKeeper:
    """Keeps the mark of one model while the ``with`` block runs: written at once,
    rewritten every HEARTBEAT_S by a thread (with the latest ``update``), removed at the
    end."""

    def __init__(self, directory: Path, name: str, steps: int) -> None:
        self.path = directory / MARK_FILE
        now = time.time()
        self.mark = TrainingMark(name, 0, steps, "training", now, now)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat, name=f"mark-{name}", daemon=True)

    def __enter__(self) -> MarkKeeper:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write()
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
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        with contextlib.suppress(OSError):  # the model's directory, if nothing else is there
            self.path.parent.rmdir()

    def update(self, step: int | None = None, phase: str | None = None) -> None:
        with self._lock:
            self.mark = replace(
                self.mark,
                step=self.mark.step if step is None else step,
                phase=self.mark.phase if phase is None else phase,
            )

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self._write()

    def _write(self) -> None:
        with self._lock:
            self.mark = replace(self.mark, updated=time.time())
            text = json.dumps(asdict(self.mark))
        partial = self.path.with_name(f".{MARK_FILE}.{os.getpid()}")
        partial.write_text(text, encoding="utf-8")
        partial.replace(self.path)  # a reader never sees half a mark
