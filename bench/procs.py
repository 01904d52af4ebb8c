"""Processes the harness starts: servers (kept until stopped) and workers (a load client
or the raw measurements, which print one JSON object and exit).

Each runs in its own process group so that stopping it stops everything it started;
every wait has a timeout; ``serving`` stops its server whatever happens.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
# "listening on 127.0.0.1:PORT" (bench servers), "serving rnnserve.v1.RnnServe on
# 127.0.0.1:PORT (...)" (rnnserve's log).
READY = re.compile(r"(?:listening on|serving \S+ on) (127\.0\.0\.1:\d+)")
# rnnserve logs its effective configuration once at start.
CONFIGURATION = re.compile(r"configuration: (\{.*\})\s*$")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
LOG_LINES_KEPT = 200


class ProcessFailed(RuntimeError):
    """A server did not start, or a worker failed; the message ends with its output."""


def environment() -> dict[str, str]:
    """This environment, with the repository root importable (for ``-m bench.*``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


@dataclass
class ServerProcess:
    name: str
    command: list[str]
    process: subprocess.Popen[str]
    lines: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=LOG_LINES_KEPT)
    )
    address: str = ""
    configuration: dict[str, Any] | None = None
    ready: threading.Event = field(default_factory=threading.Event)

    @property
    def pid(self) -> int:
        return self.process.pid

    def output_tail(self, lines: int = 30) -> str:
        return "\n".join(list(self.lines)[-lines:])

    def _drain(self) -> None:
        """Read the server's output to its end, so a chatty server never blocks on a
        full pipe; note its address and configuration on the way."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))
            if not self.ready.is_set() and (match := READY.search(line)):
                self.address = match.group(1)
                self.ready.set()
            elif self.configuration is None and (match := CONFIGURATION.search(line)):
                with contextlib.suppress(json.JSONDecodeError):
                    self.configuration = json.loads(match.group(1))
        self.ready.set()  # exited: wake the waiter, which then sees no address


def _stop_group(process: subprocess.Popen[str]) -> None:
    """SIGTERM to the process group, then SIGKILL if it is still there after a while."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if process.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(STOP_TIMEOUT_S)
    with contextlib.suppress(ProcessLookupError):  # anything it left in its group
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def serving(name: str, command: Sequence[str]) -> Iterator[ServerProcess]:
    """Start a server, wait for its ready line, yield it, stop it."""
    process = subprocess.Popen(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=environment(),
        cwd=REPO_ROOT,
        start_new_session=True,
    )
    server = ServerProcess(name, list(command), process)
    reader = threading.Thread(target=server._drain, name=f"{name}-output", daemon=True)
    reader.start()
    try:
        if not server.ready.wait(START_TIMEOUT_S) or not server.address:
            raise ProcessFailed(
                f"{name} did not report its address within {START_TIMEOUT_S:.0f} s "
                f"(exit code {process.poll()}); its output:\n{server.output_tail()}"
            )
        yield server
    finally:
        _stop_group(process)
        reader.join(STOP_TIMEOUT_S)
        if process.stdout is not None:
            process.stdout.close()


def run_worker(module: str, args: Sequence[str], timeout_s: float) -> dict[str, Any]:
    """Run ``python -m module args`` to completion; its last stdout line, as JSON."""
    command = python_module(module, *args)
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=environment(),
            cwd=REPO_ROOT,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ProcessFailed(f"{module} ran past {timeout_s:.0f} s and was killed") from exc
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise ProcessFailed(
            f"{module} {' '.join(args)} exited with {done.returncode} after "
            f"{time.perf_counter() - started:.1f} s:\n{done.stderr[-3000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    return result
