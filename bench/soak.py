"""Soak and churn: rnnserve under steady load for minutes, then 100k sessions churned.

    python -m bench.soak [--minutes 3] [--sessions 256] [--churn 100000] [--windows 6]

Soak: ``--sessions`` lockstep sessions (one StepStream each, one token per message) run
for ``--minutes``, measured in ``--windows`` consecutive windows, each by a fresh load
client process; after every window the server's RSS is read. The first window is the
warm-up: growth is RSS at the end against RSS after it. Churn: ``--churn`` sessions are
created, stepped once and closed; RSS after it is compared with RSS before it.
Loopback only, bounded in time and count. Writes bench/results/soak.json and the
"Soak and churn" section of docs/benchmarks.md (through bench.report).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from bench.machine import load_average, machine_info, rss_bytes
from bench.package import ensure_package
from bench.procs import REPO_ROOT, python_module, run_worker, serving

RESULTS = REPO_ROOT / "bench" / "results" / "soak.json"


def soak(minutes: float, sessions: int, churn: int, windows: int) -> dict[str, Any]:
    package = ensure_package()
    model = package.parent.name
    command = python_module(
        "rnnserve_server", "--models", str(package.parent.parent), "--host", "127.0.0.1",
        "--port", "0", "--max-sessions", str(max(sessions, 1000) * 4),
        "--max-sessions-per-caller", str(max(sessions, 1000) * 4),
    )  # fmt: skip
    window_s = minutes * 60 / windows
    result: dict[str, Any] = {
        "command": "python -m bench.soak "
        f"--minutes {minutes:g} --sessions {sessions} --churn {churn} --windows {windows}",
        "machine": machine_info(),
        "load_average_start": load_average(),
        "windows": [],
    }
    with serving("rnnserve", command) as server:
        result["rss_start"] = rss_bytes(server.pid)
        for index in range(windows):
            record = run_worker(
                "bench.load_client",
                ["--address", server.address, "--model", model, "--mode", "lockstep",
                 "--concurrency", str(sessions), "--warmup", "1",
                 "--duration", f"{window_s - 1:.1f}"],
                timeout_s=window_s + 120,
            )  # fmt: skip
            record["rss_after"] = rss_bytes(server.pid)
            record["window"] = index
            record["concurrency"] = sessions
            record["error_count"] = len(record.get("errors", []))
            record["errors"] = record.get("errors", [])[:10]
            result["windows"].append(record)
        warm = result["windows"][0]["rss_after"]
        end = result["windows"][-1]["rss_after"]
        result["growth_after_warmup"] = (end - warm) / warm
        time.sleep(1.0)
        result["rss_before_churn"] = rss_bytes(server.pid)
        churned = run_worker(
            "bench.load_client",
            ["--address", server.address, "--model", model, "--mode", "churn",
             "--count", str(churn), "--duration", "900"],
            timeout_s=960,
        )  # fmt: skip
        time.sleep(1.0)
        result["churn"] = churned
        result["rss_after_churn"] = rss_bytes(server.pid)
        before = result["rss_before_churn"]
        result["churn_growth"] = (result["rss_after_churn"] - before) / before
        result["server_log_tail"] = server.output_tail(10)
    result["load_average_end"] = load_average()
    result["errors_total"] = sum(w["error_count"] for w in result["windows"]) + int(
        result["churn"].get("error_count", 0)
    )
    return result


def soak_section(path: Path = RESULTS) -> list[str]:
    """The "Soak and churn" section of docs/benchmarks.md, from bench/results/soak.json."""
    if not path.exists():
        return []
    result = json.loads(path.read_text())
    mib = 1024 * 1024
    lines = [
        "## Soak and churn (issue 7)",
        "",
        f"`{result['command']}`; load average {result['load_average_start'][0]:.1f} at the "
        f"start, {result['load_average_end'][0]:.1f} at the end.",
        "",
        f"- errors: **{result['errors_total']}**",
        f"- server memory after the warm-up window {result['windows'][0]['rss_after'] / mib:.1f}"
        f" MiB, at the end {result['windows'][-1]['rss_after'] / mib:.1f} MiB: growth "
        f"**{result['growth_after_warmup'] * 100:+.1f} %** (target within 5 %)",
        f"- churn of {result['churn']['sessions']:,} sessions (create, one step, close) in "
        f"{result['churn']['seconds']:.0f} s: memory {result['rss_before_churn'] / mib:.1f} → "
        f"{result['rss_after_churn'] / mib:.1f} MiB (**{result['churn_growth'] * 100:+.1f} %**)",
        "",
        "| window | sessions | steps/s | p50 ms | p99 ms | errors | server RSS MiB |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for w in result["windows"]:
        lines.append(
            f"| {w['window']} | {w.get('concurrency', '')} | {w['steps_per_s']:,.0f} | "
            f"{w['p50_ms']:.2f} | {w['p99_ms']:.2f} | {w['error_count']} | "
            f"{w['rss_after'] / mib:.1f} |"
        )
    lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--sessions", type=int, default=256)
    parser.add_argument("--churn", type=int, default=100_000)
    parser.add_argument("--windows", type=int, default=6)
    args = parser.parse_args(argv)
    result = soak(args.minutes, args.sessions, args.churn, args.windows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    from bench.report import write_report

    write_report()
    print(json.dumps({k: result[k] for k in ("growth_after_warmup", "churn_growth",
                                             "errors_total")}))  # fmt: skip
    return 0 if result["errors_total"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
