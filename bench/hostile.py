"""A concurrent ping while hostile callers send requests at and past every size limit.

    python -m bench.hostile [--seconds 20] [--attackers 3] [--interval-ms 5]

One rnnserve-server with its default limits and authentication on, so that each client
is a caller of its own: a ping client steps one session (a one-token unary Step every
``--interval-ms``) and records each round trip, first alone, then beside ``--attackers``
hostile callers, each in its own process, each looping over the requests of ``ATTACKS``
back to back (texts and messages at and over the size limits, StepMany messages at and
over the token budget, long prompts and generations). The hostile phase runs twice: with
the default per-caller token rate, and with none (``--caller-tokens-per-s 0``: only the
size limits bound each request's work). Reports the ping's p50/p99/max per phase and
what each hostile request got back. Loopback only, bounded in time. Writes
bench/results/hostile.json and the "Hostile callers" section of docs/benchmarks.md
(through bench.report).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc

from bench.machine import load_average, machine_info
from bench.package import ensure_package
from bench.procs import REPO_ROOT, environment, python_module, serving
from bench.records import percentiles_ms

RESULTS = REPO_ROOT / "bench" / "results" / "hostile.json"
PING_TOKEN = "ping-caller-token"
CALL_TIMEOUT_S = 60.0
LETTER = 5  # a printable character's id in the benchmark vocabulary
TEXT_LIMIT = 16_384  # the server's default max_text_chars
TOKEN_LIMIT = 4096  # max_tokens_per_request
STEPS_LIMIT = 4096  # max_steps_per_message


def attacker_token(index: int) -> str:
    return f"attacker-{index}-token"


def _raw(channel: grpc.Channel, kind: str, method: str) -> Callable[..., Any]:
    """A method of rnnserve.v1.RnnServe that takes and returns serialised bytes."""
    make: dict[str, Callable[..., Any]] = {
        "unary": channel.unary_unary,
        "server-stream": channel.unary_stream,
        "bidi-stream": channel.stream_stream,
    }
    return make[kind](f"/rnnserve.v1.RnnServe/{method}", None, None)  # type: ignore[no-any-return]


class Attacker:
    """One hostile caller's requests, serialised once; ``run(kind)`` sends one."""

    def __init__(self, channel: grpc.Channel, model: str, metadata: tuple[Any, ...]) -> None:
        from rnnserve.v1 import rnnserve_pb2 as pb

        self.metadata = metadata
        create = channel.unary_unary(
            "/rnnserve.v1.RnnServe/CreateSession",
            request_serializer=pb.CreateSessionRequest.SerializeToString,
            response_deserializer=pb.Session.FromString,
        )
        sessions = [
            create(pb.CreateSessionRequest(model=model), metadata=metadata).session_id
            for _ in range(STEPS_LIMIT)
        ]
        one = sessions[0]

        def step(**fields: Any) -> bytes:
            return pb.StepRequest(session_id=one, **fields).SerializeToString()

        def many(**fields: Any) -> bytes:
            return pb.StepManyRequest(**fields).SerializeToString()

        self.requests: dict[str, tuple[str, bytes]] = {
            "Step: text of max_text_chars (refused: over max_tokens_per_request)": (
                "Step",
                step(text="a" * TEXT_LIMIT),
            ),
            "Step: text of 500,000 code points (refused: max_text_chars)": (
                "Step",
                step(text="a" * 500_000),
            ),
            "Step: a 2 MiB message (refused: max_request_bytes)": (
                "Step",
                step(text="a" * (2 << 20)),
            ),
            "Step: 4096 ids (a prompt at max_tokens_per_request)": (
                "Step",
                step(tokens=pb.TokenIds(ids=[LETTER] * TOKEN_LIMIT)),
            ),
            "StepMany: 4 steps x 4096 ids (max_tokens_per_message)": (
                "StepMany",
                many(
                    session_ids=sessions[:4],
                    tokens=[LETTER] * (4 * TOKEN_LIMIT),
                    lengths=[TOKEN_LIMIT] * 4,
                ),
            ),
            "StepMany: 100 steps x 4096 ids (refused: max_tokens_per_message)": (
                "StepMany",
                many(
                    session_ids=sessions[:100],
                    tokens=[LETTER] * (100 * TOKEN_LIMIT),
                    lengths=[TOKEN_LIMIT] * 100,
                ),
            ),
            "StepMany: 500,000 packed ids (refused: max_tokens_per_message)": (
                "StepMany",
                many(session_ids=sessions[:1], tokens=[LETTER] * 500_000, lengths=[500_000]),
            ),
            "StepMany: 4096 single-token steps": (
                "StepMany",
                many(session_ids=sessions, tokens=[LETTER] * STEPS_LIMIT),
            ),
            "StepMany: 4096 steps x top_k 1000 (refused: top entries)": (
                "StepMany",
                many(session_ids=sessions, tokens=[LETTER] * STEPS_LIMIT, top_k=1000),
            ),
            "Generate: 4096 tokens": (
                "Generate",
                pb.GenerateRequest(
                    session_id=sessions[1], max_tokens=4096, temperature=1.0
                ).SerializeToString(),
            ),
        }
        self.calls: dict[str, Callable[..., Any]] = {
            "Step": _raw(channel, "unary", "Step"),
            "StepMany": _raw(channel, "bidi-stream", "StepMany"),
            "Generate": _raw(channel, "server-stream", "Generate"),
        }

    def run(self, kind: str) -> str:
        """Send one request of ``kind``; the status it got back."""
        method, payload = self.requests[kind]
        call = self.calls[method]
        try:
            if method == "Step":
                call(payload, timeout=CALL_TIMEOUT_S, metadata=self.metadata)
            elif method == "StepMany":
                list(call(iter([payload]), timeout=CALL_TIMEOUT_S, metadata=self.metadata))
            else:
                list(call(payload, timeout=CALL_TIMEOUT_S, metadata=self.metadata))
        except grpc.RpcError as error:
            return str(error.code().name)
        return "OK"


def attack(address: str, model: str, token: str, seconds: float) -> dict[str, Any]:
    """Every kind of ATTACKS in turn, back to back, for ``seconds``: counts by status."""
    with grpc.insecure_channel(address, options=_OPTIONS) as channel:
        attacker = Attacker(channel, model, (("authorization", f"Bearer {token}"),))
        outcomes: dict[str, Counter[str]] = {kind: Counter() for kind in attacker.requests}
        deadline = time.monotonic() + seconds
        kinds = _cycle(list(attacker.requests))
        while time.monotonic() < deadline:
            kind = next(kinds)
            outcomes[kind][attacker.run(kind)] += 1
    return {kind: dict(counts) for kind, counts in outcomes.items()}


def ping(address: str, model: str, seconds: float, interval_s: float) -> dict[str, Any]:
    """One-token Steps of one session, one every ``interval_s``: their round trips."""
    from rnnserve.v1 import rnnserve_pb2 as pb
    from rnnserve.v1 import rnnserve_pb2_grpc

    metadata = (("authorization", f"Bearer {PING_TOKEN}"),)
    with grpc.insecure_channel(address, options=_OPTIONS) as channel:
        stub = rnnserve_pb2_grpc.RnnServeStub(channel)  # type: ignore[no-untyped-call]
        session = stub.CreateSession(pb.CreateSessionRequest(model=model), metadata=metadata)
        request = pb.StepRequest(session_id=session.session_id, tokens=pb.TokenIds(ids=[LETTER]))
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        deadline = time.monotonic() + seconds
        next_at = time.perf_counter()
        while time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                stub.Step(request, timeout=CALL_TIMEOUT_S, metadata=metadata)
                latencies.append(time.perf_counter() - started)
            except grpc.RpcError as error:
                errors[error.code().name] += 1
            next_at += interval_s
            time.sleep(max(0.0, next_at - time.perf_counter()))
    p50, p99 = percentiles_ms(latencies)
    return {
        "count": len(latencies),
        "p50_ms": p50,
        "p99_ms": p99,
        "max_ms": round(max(latencies) * 1e3, 3) if latencies else None,
        "errors": dict(errors),
    }


_OPTIONS = (
    ("grpc.max_send_message_length", 64 << 20),
    ("grpc.max_receive_message_length", 64 << 20),
)


def _cycle(items: list[str]) -> Iterator[str]:
    while True:
        yield from items


def _worker(role: str, args: list[str]) -> list[str]:
    return python_module("bench.hostile", "--role", role, *args)


def phase(
    address: str, model: str, attackers: int, seconds: float, interval_s: float
) -> dict[str, Any]:
    """The ping beside ``attackers`` hostile callers (none: the ping alone)."""
    common = ["--address", address, "--model", model, "--seconds", f"{seconds:g}"]
    hostile = [
        subprocess.Popen(
            _worker("attack", [*common, "--token", attacker_token(i)]),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment(),
            cwd=REPO_ROOT,
        )
        for i in range(attackers)
    ]
    if hostile:
        time.sleep(min(10.0, seconds / 4))  # the attackers open their sessions first
    pinged = subprocess.run(
        _worker("ping", [*common, "--interval-ms", f"{interval_s * 1000:g}"]),
        capture_output=True,
        text=True,
        env=environment(),
        cwd=REPO_ROOT,
        timeout=seconds + 120,
        check=True,
    )
    outcomes: dict[str, dict[str, int]] = {}
    for process in hostile:
        out, err = process.communicate(timeout=seconds + 300)
        if process.returncode != 0:
            raise RuntimeError(f"an attacker failed:\n{err[-3000:]}")
        for kind, counts in json.loads(out.strip().splitlines()[-1]).items():
            merged = outcomes.setdefault(kind, {})
            for code, count in counts.items():
                merged[code] = merged.get(code, 0) + count
    return {"ping": json.loads(pinged.stdout.strip().splitlines()[-1]), "attacks": outcomes}


def measure(seconds: float, attackers: int, interval_s: float) -> dict[str, Any]:
    package = ensure_package()
    model = package.parent.name
    tokens = ",".join(
        [f"ping:{PING_TOKEN}", *(f"attacker{i}:{attacker_token(i)}" for i in range(attackers))]
    )
    base = ["--models", str(package.parent.parent), "--host", "127.0.0.1", "--port", "0"]
    base += ["--shutdown-grace-s", "0", "--auth-tokens", tokens]
    result: dict[str, Any] = {
        "command": f"python -m bench.hostile --seconds {seconds:g} --attackers {attackers} "
        f"--interval-ms {interval_s * 1000:g}",
        "machine": machine_info(),
        "load_average_start": load_average(),
        "phases": {},
    }
    plan = [
        ("ping alone", [], 0),
        ("ping beside the hostile callers, default limits", [], attackers),
        (
            "ping beside the hostile callers, no token rate limit",
            ["--caller-tokens-per-s", "0"],
            attackers,
        ),
    ]
    for name, flags, count in plan:
        command = python_module("rnnserve_server", *base, *flags)
        with serving("rnnserve", command) as server:
            result["phases"][name] = phase(server.address, model, count, seconds, interval_s)
    result["load_average_end"] = load_average()
    return result


def hostile_section(path: Path = RESULTS) -> list[str]:
    """The "Hostile callers" section of docs/benchmarks.md, from bench/results/hostile.json."""
    if not path.exists():
        return []
    result = json.loads(path.read_text())
    lines = [
        "## Hostile callers (issue 20)",
        "",
        f"`{result['command']}`; load average {result['load_average_start'][0]:.1f} at the "
        f"start, {result['load_average_end'][0]:.1f} at the end. A one-token Step of its own "
        "session, sent at a fixed pace by a caller of its own, beside hostile callers that "
        "send the requests below back to back (each hostile caller in its own process).",
        "",
        "| phase | pings | p50 ms | p99 ms | max ms | errors |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, measured in result["phases"].items():
        p = measured["ping"]
        errors = ", ".join(f"{k} {v}" for k, v in p["errors"].items()) or "0"
        lines.append(
            f"| {name} | {p['count']:,} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | "
            f"{p['max_ms']:.2f} | {errors} |"
        )
    lines += ["", "| hostile request | " + " | ".join(list(result["phases"])[1:]) + " |"]
    lines.append("| --- |" + " --- |" * (len(result["phases"]) - 1))
    kinds: dict[str, list[str]] = {}
    for measured in list(result["phases"].values())[1:]:
        for kind, counts in measured["attacks"].items():
            shown = ", ".join(f"{code} {count:,}" for code, count in sorted(counts.items()))
            kinds.setdefault(kind, []).append(shown)
    for kind, cells in kinds.items():
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    lines.append("")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="each phase")
    parser.add_argument("--attackers", type=int, default=3)
    parser.add_argument("--interval-ms", type=float, default=5.0, help="between pings")
    parser.add_argument("--role", choices=("all", "ping", "attack"), default="all")
    parser.add_argument("--address", help="(ping, attack) the server")
    parser.add_argument("--model", help="(ping, attack) the model")
    parser.add_argument("--token", help="(attack) the attacker's bearer token")
    args = parser.parse_args(argv)
    if args.role == "ping":
        print(json.dumps(ping(args.address, args.model, args.seconds, args.interval_ms / 1000)))
        return 0
    if args.role == "attack":
        print(json.dumps(attack(args.address, args.model, args.token, args.seconds)))
        return 0
    result = measure(args.seconds, args.attackers, args.interval_ms / 1000)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    from bench.report import write_report

    write_report()
    print(json.dumps({name: p["ping"] for name, p in result["phases"].items()}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
