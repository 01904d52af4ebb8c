"""What sharing sessions costs: one load, three deployments, in one run.

    python -m bench.scaleout [--concurrency 1,16,64] [--multiplexed 1000,4096]
                             [--warmup 1] [--duration 5]

The same lockstep load (bench/load_client.py: N sessions, each its own StepStream, one
token per message, waiting for each answer) on the benchmark model against:

* ``memory``: one rnnserve-server keeping sessions in its memory (the default);
* ``redis``: one rnnserve-server keeping them in a redis-server (``session_store``);
* ``3 replicas + nginx``: three such servers behind nginx, round robin, so consecutive
  steps of a session land on different replicas and move its state through Redis.

Then, in memory and in Redis, one StepMany stream whose every message carries one step
of each of ``--multiplexed`` distinct sessions (load_client's ``multiplexed`` mode).
Steps/s, p50 and p99 (per step; per message for StepMany), and each as a ratio to
``memory``, go to stdout as Markdown tables and to bench/results/scaleout.json. Needs
redis-server and nginx (make system-deps). Everything runs on this machine, so on a
small machine the replicas share its cores with the load client, Redis and nginx: the
figures show the cost per step of the shared store, not what more machines would add.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.cluster import Nginx, RedisServer
from bench.machine import load_average, machine_info
from bench.package import ensure_package
from bench.procs import REPO_ROOT, python_module, run_worker, serving

RESULTS = REPO_ROOT / "bench" / "results" / "scaleout.json"
MEMORY, REDIS, REPLICAS = "memory", "redis", "3 replicas + nginx"


def server_command(models: Path, store: str = "", keys: Path | None = None) -> list[str]:
    """The server's command; with a store, the replicas' shared state keys from a file
    (so the command and the results show no key)."""
    args = ["--models", str(models), "--host", "127.0.0.1", "--port", "0"]
    # the load client is one caller: the deployment's throughput is measured, not the
    # token budget of one caller
    args += ["--shutdown-grace-s", "0", "--caller-tokens-per-s", "0"]
    if store:
        assert keys is not None
        args += ["--session-store", store, "--state-keys-file", str(keys)]
    return python_module("rnnserve_server", *args)


@contextlib.contextmanager
def deployment(name: str, models: Path, scratch: Path) -> Iterator[str]:
    """The address of one deployment, up for the duration of the block."""
    with contextlib.ExitStack() as stack:
        if name == MEMORY:
            yield stack.enter_context(serving(name, server_command(models))).address
            return
        count = 1 if name == REDIS else 3
        redis = stack.enter_context(RedisServer(scratch / f"redis-{count}"))
        keys = scratch / f"state-keys-{count}"
        keys.write_text(secrets.token_hex(32) + "\n")
        command = server_command(models, redis.url, keys)
        servers = [stack.enter_context(serving(f"{name} {i}", command)) for i in range(count)]
        if count == 1:
            yield servers[0].address
            return
        directory = scratch / "nginx"
        directory.mkdir()  # a fresh one per run: the scratch folder is new
        yield stack.enter_context(Nginx(directory, [s.address for s in servers])).address


def drive(
    address: str, model: str, mode: str, sessions: int, *, warmup: float, duration: float
) -> Any:
    """bench.load_client in ``mode`` (lockstep: a StepStream per session; multiplexed: one
    StepMany stream for all of them), in a process of its own."""
    slack_s = 120 if mode == "lockstep" else 300
    return run_worker(
        "bench.load_client",
        [
            "--address", address, "--model", model, f"--mode={mode}",
            f"--concurrency={sessions}", f"--warmup={warmup}", f"--duration={duration}",
        ],
        timeout_s=warmup + duration + slack_s,
    )  # fmt: skip


def table(records: list[dict[str, Any]]) -> list[str]:
    base = {r["concurrency"]: r for r in records if r["system"] == MEMORY}
    lines = [
        "| deployment | sessions | steps/s | p50 ms | p99 ms | steps/s vs memory | p50 vs memory |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in records:
        b = base[r["concurrency"]]
        lines.append(
            f"| {r['system']} | {r['concurrency']} | {r['steps_per_s']:,.0f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['steps_per_s'] / b['steps_per_s']:.2f}x"
            f" | {r['p50_ms'] / b['p50_ms']:.2f}x |"
        )
    return lines


def multiplexed_table(records: list[dict[str, Any]]) -> list[str]:
    base = {r["sessions"]: r for r in records if r["system"] == MEMORY}
    lines = [
        "| deployment | sessions per message | steps/s | p50 ms per message | p99 ms | "
        "steps/s vs memory |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in records:
        b = base[r["sessions"]]
        lines.append(
            f"| {r['system']} | {r['sessions']:,} | {r['steps_per_s']:,.0f} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['steps_per_s'] / b['steps_per_s']:.2f}x |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scaleout", description=__doc__)
    parser.add_argument("--concurrency", default="1,16,64")
    parser.add_argument(
        "--multiplexed",
        default="1000,4096",
        help="distinct sessions per StepMany message (one stream), in memory and in Redis",
    )
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=RESULTS, help="the JSON results file")
    args = parser.parse_args(argv)
    package = ensure_package()
    models, model = package.parent.parent, package.parent.name
    started = time.perf_counter()
    records: list[dict[str, Any]] = []
    many: list[dict[str, Any]] = []  # StepMany messages of many distinct sessions
    with tempfile.TemporaryDirectory(prefix="rnnserve-scaleout-") as scratch:
        for name in (MEMORY, REDIS, REPLICAS):
            with deployment(name, models, Path(scratch)) as address:
                for concurrency in map(int, args.concurrency.split(",")):
                    load = load_average()
                    result = drive(
                        address,
                        model,
                        "lockstep",
                        concurrency,
                        warmup=args.warmup,
                        duration=args.duration,
                    )
                    if result["errors"]:
                        raise RuntimeError(f"{name} at {concurrency}: {result['errors'][:3]}")
                    records.append(
                        {
                            "system": name,
                            "concurrency": concurrency,
                            "steps_per_s": result["steps_per_s"],
                            "p50_ms": result["p50_ms"],
                            "p99_ms": result["p99_ms"],
                            "load_average": load,
                        }
                    )
                if name == REPLICAS:
                    continue  # one stream reaches one replica: as "redis", behind nginx
                for sessions in map(int, filter(None, args.multiplexed.split(","))):
                    load = load_average()
                    result = drive(
                        address,
                        model,
                        "multiplexed",
                        sessions,
                        warmup=args.warmup,
                        duration=args.duration,
                    )
                    if result["errors"]:
                        raise RuntimeError(
                            f"{name}, StepMany of {sessions}: {result['errors'][:3]}"
                        )
                    many.append(
                        {
                            "system": name,
                            "sessions": sessions,
                            "steps_per_s": result["steps_per_s"],
                            "p50_ms": result["p50_ms"],
                            "p99_ms": result["p99_ms"],
                            "load_average": load,
                        }
                    )
    command = "python -m bench.scaleout " + " ".join(sys.argv[1:] if argv is None else argv)
    summary = {
        "command": command.strip(),
        "machine": machine_info(),
        "seconds": round(time.perf_counter() - started, 1),
        "records": records,
        "multiplexed": many,
    }
    args.out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print("\n".join(table(records)))
    print("\n".join(multiplexed_table(many)))
    print(f"wrote {args.out} ({summary['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
