"""What the figures were measured on, and process memory, read from /proc (Linux)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("grpcio", "protobuf", "onnxruntime", "numpy", "rnnserve-server", "rnnserve")


def _proc_fields(path: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    return fields


def _kib_field(path: str, key: str) -> int:
    """A ``NAME:  1234 kB`` field of a /proc file, in bytes."""
    return int(_proc_fields(path)[key].split()[0]) * 1024


def rss_bytes(pid: int) -> int:
    """Resident set size of a process now (VmRSS)."""
    return _kib_field(f"/proc/{pid}/status", "VmRSS")


def peak_rss_bytes(pid: int) -> int:
    """Highest resident set size the process has had (VmHWM)."""
    return _kib_field(f"/proc/{pid}/status", "VmHWM")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used (/proc/PID/stat)."""
    stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
    user, system = int(fields[11]), int(fields[12])
    return (user + system) / os.sysconf("SC_CLK_TCK")


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout.strip()


def machine_info() -> dict[str, Any]:
    cpu = _proc_fields("/proc/cpuinfo")
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu.get("model name", platform.processor() or "unknown"),
        "memory_bytes": _kib_field("/proc/meminfo", "MemTotal"),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "packages": {name: _version(name) for name in PACKAGES},
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }
