"""Soak and churn: rnnserve under steady load for minutes, then 100k sessions churned.

    python -m bench.soak [--minutes 3] [--sessions 256] [--churn 100000] [--windows 6]
                         [--expire 100000]

Soak: ``--sessions`` lockstep sessions (one StepStream each, one token per message) run
for ``--minutes``, measured in ``--windows`` consecutive windows, each by a fresh load
client process; after every window the server's RSS is read. The first window is the
warm-up: growth is RSS at the end against RSS after it. Churn: ``--churn`` sessions are
created, stepped once and closed; RSS after it is compared with RSS before it. Expiry:
``--expire`` sessions are opened and left idle past their timeout; RSS before, with them
and after they expired shows how much of their memory is given back.
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
from bench.procs import REPO_ROOT, ServerProcess, python_module, run_worker, serving

RESULTS = REPO_ROOT / "bench" / "results" / "soak.json"
EXPIRY_IDLE_S = 180  # the expiring sessions' idle timeout: longer than opening them takes
EXPIRY_SETTLE_S = 10.0  # after it: the sweep closes them, a slice at a time


def soak(
    minutes: float, sessions: int, churn: int, windows: int, expire: int = 0
) -> dict[str, Any]:
    package = ensure_package()
    model = package.parent.name
    limit = str(max(sessions, 1000) * 4 + expire)
    command = python_module(
        "rnnserve_server", "--models", str(package.parent.parent), "--host", "127.0.0.1",
        "--port", "0", "--max-sessions", limit, "--max-sessions-per-caller", limit,
    )  # fmt: skip
    window_s = minutes * 60 / windows
    result: dict[str, Any] = {
        "command": "python -m bench.soak "
        f"--minutes {minutes:g} --sessions {sessions} --churn {churn} --windows {windows} "
        f"--expire {expire}",
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
        if expire:
            result["expiry"] = expiry(server, model, expire)
        result["server_log_tail"] = server.output_tail(10)
    result["load_average_end"] = load_average()
    result["errors_total"] = sum(w["error_count"] for w in result["windows"]) + int(
        result["churn"].get("error_count", 0)
    )
    return result


def expiry(server: ServerProcess, model: str, count: int) -> dict[str, Any]:
    """``count`` sessions opened and left to expire: the server's memory before, with them
    and after they expired (the state pool gives its memory back, statepool.py)."""
    before = rss_bytes(server.pid)
    opened = run_worker(
        "bench.load_client",
        ["--address", server.address, "--model", model, "--mode", "sessions",
         "--count", str(count), "--idle-timeout", str(EXPIRY_IDLE_S), "--duration", "600"],
        timeout_s=660,
    )  # fmt: skip
    held = rss_bytes(server.pid)
    time.sleep(EXPIRY_IDLE_S + EXPIRY_SETTLE_S)  # idle past their timeout, then swept
    return {
        "sessions": opened["sessions"],
        "rss_before": before,
        "rss_with_sessions": held,
        "rss_after_expiry": rss_bytes(server.pid),
        "returned": (held - rss_bytes(server.pid)) / max(1, held - before),
    }


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
    ]
    expired = result.get("expiry")
    if expired:
        lines.append(
            f"- {expired['sessions']:,} idle sessions opened and left to expire: memory "
            f"{expired['rss_before'] / mib:.1f} → {expired['rss_with_sessions'] / mib:.1f} "
            f"MiB with them → {expired['rss_after_expiry'] / mib:.1f} MiB after they expired "
            f"(**{expired['returned'] * 100:.0f} %** of what they took given back)"
        )
    lines += [
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
    parser.add_argument("--expire", type=int, default=100_000, help="idle sessions to expire")
    args = parser.parse_args(argv)
    result = soak(args.minutes, args.sessions, args.churn, args.windows, args.expire)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    from bench.report import write_report

    write_report()
    print(json.dumps({k: result[k] for k in ("growth_after_warmup", "churn_growth",
                                             "errors_total")}))  # fmt: skip
    return 0 if result["errors_total"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
