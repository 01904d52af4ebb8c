"""The demo zoo: one model per shape of docs/MODELS.md, each a preset in ``config.py``.

``rnnserve-train zoo`` trains (and exports) every zoo model that the repository lacks,
``jobs`` at a time in their own processes, longest first, so that on 2 cores the whole
zoo takes about as long as its longest half. Each run's log goes to
``<runs>/<name>.log``.

Two budgets: ``quick`` (the default, minutes: ``make models``, CI) and ``full`` (the
preset's ``FULL_BUDGET``, about 80 minutes on 2 cores, every model beating its baseline).
A model counts as present when a version of it was trained with that budget, so
``--budget=full`` adds a full-budget version beside a quick one, and the server, which
serves the highest version by default, serves it.

The order (``schedule``): with the quick budget, the first run's, the language model of
the quickstart first and the others shortest first, so that a server polling the
repository serves a model within a minute or two and each one as soon as it is written;
with the full budget, longest first, so the zoo ends soonest.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from rnnserve_train.zooprogress import ZooProgress

log = logging.getLogger(__name__)

# The language model the README's quickstart uses: trained first on a first run.
FIRST_MODEL = "char-gru"

# name -> (shape, seconds it takes on one idle core of the reference machine with the
# quick and the full budget; the jobs run longest first)
ZOO: dict[str, tuple[str, dict[str, int]]] = {
    "char-gru": ("many-to-many, T_x = T_y", {"quick": 250, "full": 1800}),
    "word-gru": ("many-to-many, T_x = T_y", {"quick": 250, "full": 2400}),
    "dates": ("seq2seq (many-to-many, T_x ≠ T_y)", {"quick": 125, "full": 330}),
    "one-step": ("one-to-one", {"quick": 85, "full": 950}),
    "name-language": ("many-to-one", {"quick": 55, "full": 1300}),
    "name-generator": ("one-to-many", {"quick": 45, "full": 150}),
    "vowels": ("many-to-one over float vectors", {"quick": 40, "full": 120}),
}


@dataclass(frozen=True)
class ZooRun:
    name: str
    status: str  # "trained", "present" or "failed (exit N, see LOG)"
    seconds: float


def trained_budget(manifest: Path) -> str | None:
    """The budget a package was trained with (quick for packages older than budgets);
    None if its manifest is unreadable."""
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    config = data.get("training", {}).get("config", {}) if isinstance(data, dict) else {}
    return str(config.get("budget", "quick")) if isinstance(config, dict) else "quick"


def present(out: Path, name: str, budget: str = "quick") -> bool:
    """Whether ``out/name`` already holds a version trained with ``budget``."""
    return any(
        trained_budget(version / "manifest.json") == budget for version in (out / name).glob("*")
    )


def schedule(names: Sequence[str], budget: str) -> list[str]:
    """The order in which the models start (see the module doc)."""
    seconds = {n: ZOO[n][1][budget] for n in names}
    if budget != "quick":
        return sorted(names, key=lambda n: -seconds[n])
    return sorted(names, key=lambda n: (n != FIRST_MODEL, seconds[n]))


def train_zoo(
    out: Path,
    runs: Path,
    only: Sequence[str] = (),
    jobs: int = 2,
    *,
    extra: Sequence[str] = (),
    budget: str = "quick",
    stream: TextIO | None = None,
) -> list[ZooRun]:
    """Train every model of ``only`` (default: the whole zoo) that lacks a ``budget``
    version; its progress goes to ``stream`` (``zooprogress.py``; default stdout)."""
    names = list(only or ZOO)
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        raise ValueError(f"not zoo models: {', '.join(unknown)}; the zoo: {', '.join(ZOO)}")
    done = [ZooRun(n, "present", 0.0) for n in names if present(out, n, budget)]
    todo = schedule([n for n in names if not present(out, n, budget)], budget)
    if todo:
        runs.mkdir(parents=True, exist_ok=True)

    def train_one(name: str) -> ZooRun:
        display.started(name)
        started = time.perf_counter()
        log_path = runs / f"{name}.log"
        command = [
            sys.executable,
            "-m",
            "rnnserve_train.cli",
            f"--preset={name}",
            f"--out={out}",
            f"--runs={runs}",
            f"--budget={budget}",
            "--progress=false",
            *extra,
        ]
        log.info("training %s (log: %s)", name, log_path)
        with log_path.open("w", encoding="utf-8") as output:
            code = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, check=False)
        seconds = time.perf_counter() - started
        status = (
            "trained"
            if code.returncode == 0
            else f"failed (exit {code.returncode}, see {log_path})"
        )
        log.info("%s: %s in %.0f s", name, status, seconds)
        display.finished(name, status)
        return ZooRun(name, status, seconds)

    display = ZooProgress(out, todo, stream or sys.stdout)
    with display, ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        done += list(pool.map(train_one, todo))
    return done
