"""Package sizes on disk and the resident memory of a server that loads one of them.

    python -m bench.package_memory --models=models [--out=bench/results/package_memory.json]

For every package ``<models>/<name>/<version>``: its size on disk (per file), then a real
``rnnserve-server`` process whose repository holds only that package (a symlink), and
its memory once it serves: VmRSS, split into anonymous and file-backed pages
(/proc/PID/status), less the same figures of a server with an empty repository. One
model loaded per process, nothing else running in it; each figure is the median of
``--repeats`` starts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.procs import python_module, serving

FIELDS = ("VmRSS", "RssAnon", "RssFile")
SETTLE_S = 1.0  # after the ready line, so lazily touched pages are counted too


def memory_mib(pid: int) -> dict[str, float]:
    """VmRSS, RssAnon and RssFile of a process, in MiB."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in FIELDS:
            values[key] = int(rest.split()[0]) / 1024
    return values


def server_memory(models: Path, repeats: int) -> dict[str, float]:
    """The median memory of ``repeats`` servers of the repository ``models``."""
    samples: dict[str, list[float]] = {key: [] for key in FIELDS}
    for _ in range(repeats):
        command = python_module(
            "rnnserve_server", "--models", str(models), "--host", "127.0.0.1", "--port", "0"
        )
        with serving("rnnserve", command) as server:
            time.sleep(SETTLE_S)
            for key, value in memory_mib(server.pid).items():
                samples[key].append(value)
    return {key: statistics.median(values) for key, values in samples.items()}


def package_sizes(package: Path) -> dict[str, int]:
    return {f.name: f.stat().st_size for f in sorted(package.iterdir()) if f.is_file()}


def measure(models: Path, repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        empty = Path(scratch) / "empty"
        empty.mkdir()
        baseline = server_memory(empty, repeats)
        results: dict[str, Any] = {"empty_server_mib": baseline, "packages": {}}
        for package in sorted(p for p in models.glob("*/*") if (p / "manifest.json").is_file()):
            repository = Path(scratch) / package.parent.name
            (repository / package.parent.name).mkdir(parents=True)
            (repository / package.parent.name / package.name).symlink_to(package.resolve())
            memory = server_memory(repository, repeats)
            sizes = package_sizes(package)
            results["packages"][f"{package.parent.name}/{package.name}"] = {
                "format_version": json.loads((package / "manifest.json").read_text())[
                    "format_version"
                ],
                "bytes": sum(sizes.values()),
                "files": sizes,
                "server_mib": memory,
                "model_mib": {k: round(memory[k] - baseline[k], 1) for k in FIELDS},
            }
    return results


def table(results: dict[str, Any]) -> str:
    lines = [
        "| package | format | on disk | server RSS (less an empty server's) | anonymous | file |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in results["packages"].items():
        model = row["model_mib"]
        lines.append(
            f"| {name} | {row['format_version']} | {row['bytes'] / 1e6:.1f} MB | "
            f"{model['VmRSS']:.1f} MiB | {model['RssAnon']:.1f} MiB | {model['RssFile']:.1f} MiB |"
        )
    empty = results["empty_server_mib"]
    lines.append(f"\nAn empty server: {empty['VmRSS']:.1f} MiB resident.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    results = measure(args.models, args.repeats)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
