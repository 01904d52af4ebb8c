"""The demo zoo: one model per shape of docs/MODELS.md, each a preset in ``config.py``.

``rnnserve-train zoo`` trains (and exports) every zoo model that the repository lacks,
``jobs`` at a time in their own processes, longest first, so that on 2 cores the whole
zoo takes about as long as its longest half. Each run's log goes to
``<runs>/<name>.log``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# name -> (shape, seconds it took on one core of the reference machine; orders the jobs)
ZOO: dict[str, tuple[str, int]] = {
    "char-gru": ("many-to-many, T_x = T_y", 250),
    "word-gru": ("many-to-many, T_x = T_y", 250),
    "dates": ("seq2seq (many-to-many, T_x ≠ T_y)", 125),
    "one-step": ("one-to-one", 85),
    "name-language": ("many-to-one", 55),
    "name-generator": ("one-to-many", 45),
    "vowels": ("many-to-one over float vectors", 40),
}


@dataclass(frozen=True)
class ZooRun:
    name: str
    status: str  # "trained", "present" or "failed (exit N, see LOG)"
    seconds: float


def present(out: Path, name: str) -> bool:
    """Whether ``out/name`` already holds a version with a manifest."""
    return any((version / "manifest.json").is_file() for version in (out / name).glob("*"))


def train_zoo(
    out: Path, runs: Path, only: Sequence[str] = (), jobs: int = 2, extra: Sequence[str] = ()
) -> list[ZooRun]:
    """Train every missing model of ``only`` (default: the whole zoo)."""
    names = list(only or ZOO)
    unknown = [n for n in names if n not in ZOO]
    if unknown:
        raise ValueError(f"not zoo models: {', '.join(unknown)}; the zoo: {', '.join(ZOO)}")
    done = [ZooRun(n, "present", 0.0) for n in names if present(out, n)]
    todo = sorted((n for n in names if not present(out, n)), key=lambda n: -ZOO[n][1])
    if todo:
        runs.mkdir(parents=True, exist_ok=True)

    def train_one(name: str) -> ZooRun:
        started = time.perf_counter()
        log_path = runs / f"{name}.log"
        command = [
            sys.executable,
            "-m",
            "rnnserve_train.cli",
            f"--preset={name}",
            f"--out={out}",
            f"--runs={runs}",
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
        return ZooRun(name, status, seconds)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        done += list(pool.map(train_one, todo))
    return done
