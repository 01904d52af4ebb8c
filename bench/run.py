"""``python -m bench``: every measurement of the benchmark in one run, then the JSON, the
page and the plot.

Order: the model package (cached), raw in-process onnxruntime, then the three servers
(echo, baseline, rnnserve) started side by side and measured in turn, figure by figure,
the load client in its own process each time; then a fresh rnnserve for the idle-session
memory. A measurement that fails is recorded with its error and the run goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import json
import logging
import math
import os
import re
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import plot, report
from bench.cluster import MissingProgram, RedisServer
from bench.machine import cpu_seconds, load_average, machine_info, peak_rss_bytes, rss_bytes
from bench.package import DEFAULT_CACHE, ModelSpec, ensure_package
from bench.procs import REPO_ROOT, ProcessFailed, ServerProcess, python_module, run_worker, serving
from bench.records import (
    BASELINE,
    ECHO,
    GENERATE,
    GENERATE_GROUPED,
    IDLE_MEMORY,
    LOCKSTEP,
    LOCKSTEP_REDIS,
    MULTIPLEXED,
    PROMPT_ONE_CALL,
    PROMPT_RAW_SEQUENCE,
    PROMPT_RAW_STEPS,
    PROMPT_SINGLE_STEPS,
    RAW,
    RAW_SAMPLING,
    RAW_STEP,
    RNNSERVE,
    SERVERS,
    VOCABULARY,
    Record,
    vocabulary_label,
    vocabulary_scenario,
)

log = logging.getLogger("bench")

SCHEMA_VERSION = 1
WORKER_GRACE_S = 120.0
DEFAULT_SESSION_LIMIT = 100_000
IDLE_CPU_WINDOW_S = 2.0
# The baseline has no StepMany: multiplexing is what it would not write.
MULTIPLEXED_SYSTEMS = (ECHO, RNNSERVE)
# Server limits on open sessions, raised for the idle-memory figure where the server has them.
SESSION_LIMIT_FLAGS = ("--max-sessions", "--max-sessions-per-caller")


@dataclass(frozen=True)
class Plan:
    """What one run measures, and for how long."""

    warmup_s: float = 1.0
    duration_s: float = 5.0
    concurrencies: tuple[int, ...] = (1, 8, 64, 256)
    multiplexed_sessions: int = 256  # over one StepMany stream
    redis_sessions: int = 64  # lockstep, rnnserve's sessions in a Redis store
    generate_concurrencies: tuple[int, ...] = (1, 64)
    raw_batches: tuple[int, ...] = (1, 8, 64, 256)
    sampling_batches: tuple[int, ...] = (1, 64)
    raw_duration_s: float = 2.0
    max_tokens: int = 512  # per Generate call; the client calls again until the window ends
    tokens_per_message: int = 16  # rnnserve's grouped generation (GENERATE_GROUPED)
    prompt_tokens: int = 2000
    prompt_repeats: int = 5
    single_steps_budget_s: float = 60.0
    idle_sessions: int = 100_000
    idle_time_limit_s: float = 240.0
    settle_s: float = 0.5  # between measurements: the previous one's sockets and threads go
    # Every server figure is taken this many times, in rounds over the whole plan, and the
    # best kept (as raw's start and end runs): on a shared machine one 5 s window alone
    # can land in a neighbour's load spike, and a ratio of two such windows moved by 25 %
    # between identical runs.
    rounds: int = 2
    # Word models of these vocabularies (synthetic words, random weights), each stepped
    # through rnnserve at 1 and 64 sessions and raw at batch 1 and 64: (words, hidden).
    # Hidden 128 is the zoo's word-gru. At 1M words its step graph would hold 2 GB of
    # weights, over ONNX's 2 GB protobuf limit (the exporter writes no external data):
    # hidden 64 there (built once in ~2 min, 3.3 GB in bench/.cache, ~7 GB of memory).
    vocabularies: tuple[tuple[int, int], ...] = ((10_000, 128), (100_000, 128), (1_000_000, 64))
    vocabulary_sessions: tuple[int, ...] = (1, 64)


QUICK = Plan(
    warmup_s=0.2,
    duration_s=0.6,
    concurrencies=(1, 64),
    raw_batches=(1, 64),
    raw_duration_s=0.3,
    max_tokens=64,
    prompt_tokens=200,
    prompt_repeats=2,
    single_steps_budget_s=5.0,
    idle_sessions=2000,
    idle_time_limit_s=20.0,
    settle_s=0.1,
    rounds=1,
    vocabularies=((1_000, 32),),
)


@dataclass
class Recorder:
    """The run's records; each measurement is followed by a short pause."""

    settle_s: float
    records: list[Record] = dataclasses.field(default_factory=list)

    def measure(
        self,
        system: str,
        scenario: str,
        fn: Callable[[], list[Record]],
        *,
        server: ServerProcess | None = None,
        concurrency: int | None = None,
    ) -> None:
        """Append fn's records; a failure becomes one record carrying the error (and the
        end of the server's log)."""
        load = load_average()
        log.info("measuring %s %s%s", system, scenario, f" at {concurrency}" if concurrency else "")
        try:
            measured = fn()
        except (ProcessFailed, json.JSONDecodeError, KeyError, OSError) as exc:
            log.error("%s %s failed: %s", system, scenario, exc)
            error = str(exc)[-2000:]
            if server is not None:
                error += f"\n--- the end of {server.name}'s log:\n{server.output_tail(15)}"
            measured = [Record(system, scenario, concurrency=concurrency, error=error)]
        for record in measured:
            record.extra.setdefault("load_average", load)
            errors = record.extra.pop("errors", None)
            if errors and record.error is None:
                record.error = f"{len(errors)} call(s) failed; first: {errors[0]}"
            self.records.append(record)
        time.sleep(self.settle_s)


# ---------------------------------------------------------------- raw in-process


def raw_step_record(
    run: dict[str, Any], scenario: str, extra: dict[str, Any], *, rate: str = "steps_per_s"
) -> Record:
    """One of bench.raw's step-graph figures (``result["step"]``, or with ``rate``
    ``tokens_per_s`` its sampling loop's) as a record."""
    return Record(
        RAW,
        scenario,
        batch=run["batch"],
        **{rate: run["per_s"]},
        p50_ms=run["p50_ms"],
        p99_ms=run["p99_ms"],
        count=run["runs"],
        duration_s=run["duration_s"],
        extra=dict(extra),
    )


def measure_raw(package: Path, plan: Plan) -> list[Record]:
    result = run_worker(
        "bench.raw",
        [
            "--package",
            str(package),
            "--batches",
            ",".join(map(str, plan.raw_batches)),
            "--sampling-batches",
            ",".join(map(str, plan.sampling_batches)),
            "--warmup",
            str(min(plan.warmup_s, 0.5)),
            "--duration",
            str(plan.raw_duration_s),
            "--prompt-tokens",
            str(plan.prompt_tokens),
            "--repeats",
            str(plan.prompt_repeats),
        ],
        timeout_s=WORKER_GRACE_S * 3,
    )
    threads = {"intra_op_threads": result["threads"] or "default"}
    records = [raw_step_record(r, RAW_STEP, threads) for r in result["step"]]
    records += [
        raw_step_record(r, RAW_SAMPLING, threads, rate="tokens_per_s") for r in result["sampling"]
    ]
    loop = result["prompt_step_loop"]
    records.append(
        Record(
            RAW,
            PROMPT_RAW_STEPS,
            batch=1,
            prompt_tokens=plan.prompt_tokens,
            p50_ms=loop["p50_ms"],
            p99_ms=loop["p99_ms"],
            total_ms=loop["p50_ms"],
            count=plan.prompt_repeats,
            extra=dict(threads),
        )
    )
    sequence = result["prompt_sequence"]
    records.append(
        Record(RAW, PROMPT_RAW_SEQUENCE, batch=1, prompt_tokens=plan.prompt_tokens)
        if sequence is None
        else Record(
            RAW,
            PROMPT_RAW_SEQUENCE,
            batch=1,
            prompt_tokens=plan.prompt_tokens,
            p50_ms=sequence["p50_ms"],
            p99_ms=sequence["p99_ms"],
            total_ms=sequence["p50_ms"],
            count=plan.prompt_repeats,
            extra=dict(threads),
        )
    )
    if sequence is None:
        records[-1].skipped = "the model package has no sequence graph"
    return records


def best_runs(records: list[Record]) -> list[Record]:
    """Of each figure measured more than once (raw at the start and the end, servers in
    rounds), the best (more per second, or less time), the others' figures kept in
    ``extra["other_runs"]``; a failed try yields to a good one. Order of first appearance."""
    kept: dict[tuple[str, str, int | None, int | None], Record] = {}
    for record in records:
        key = (record.system, record.scenario, record.concurrency, record.batch)
        first = kept.get(key)
        if first is None:
            kept[key] = record
            continue
        better, worse = sorted((first, record), key=_rank)
        better.extra["other_runs"] = [
            *first.extra.get("other_runs", []),
            *record.extra.get("other_runs", []),
            _figure(worse),
        ]
        kept[key] = better
    return list(kept.values())


def _figure(record: Record) -> float | None:
    return record.steps_per_s or record.tokens_per_s or record.total_ms


def _rank(record: Record) -> tuple[int, float]:
    """Sort key: good records first, then the faster."""
    if record.error is not None or _figure(record) is None:
        return (1, 0.0)
    if record.total_ms is not None:
        return (0, record.total_ms)
    return (0, -(record.steps_per_s or record.tokens_per_s or 0.0))


# ---------------------------------------------------------------- servers


def load_client(server: ServerProcess, model: str, *args: str, budget_s: float) -> dict[str, Any]:
    return run_worker(
        "bench.load_client",
        ["--address", server.address, "--model", model, *args],
        timeout_s=budget_s + WORKER_GRACE_S,
    )


def _measure_steps(
    server: ServerProcess,
    model: str,
    concurrency: int,
    plan: Plan,
    *,
    mode: str,
    scenario: str,
    extra: dict[str, Any],
) -> list[Record]:
    """Steps/s and per-step (or per-message) latency of one load-client mode."""
    result = load_client(
        server,
        model,
        f"--mode={mode}",
        f"--concurrency={concurrency}",
        f"--warmup={plan.warmup_s}",
        f"--duration={plan.duration_s}",
        budget_s=plan.warmup_s + plan.duration_s,
    )
    return [
        Record(
            server.name,
            scenario,
            concurrency=concurrency,
            steps_per_s=result["steps_per_s"],
            p50_ms=result["p50_ms"],
            p99_ms=result["p99_ms"],
            count=result["count"],
            duration_s=plan.duration_s,
            extra={"errors": result["errors"], **extra},
        )
    ]


def measure_lockstep(
    server: ServerProcess, model: str, concurrency: int, plan: Plan
) -> list[Record]:
    return _measure_steps(
        server, model, concurrency, plan, mode="lockstep", scenario=LOCKSTEP, extra={}
    )


def measure_multiplexed(
    server: ServerProcess, model: str, concurrency: int, plan: Plan
) -> list[Record]:
    return _measure_steps(
        server,
        model,
        concurrency,
        plan,
        mode="multiplexed",
        scenario=MULTIPLEXED,
        extra={"latency": "per StepMany message"},
    )


def measure_generate_grouped(
    server: ServerProcess, model: str, concurrency: int, plan: Plan
) -> list[Record]:
    """rnnserve's Generate with several tokens per response message."""
    return measure_generate(server, model, concurrency, plan, plan.tokens_per_message)


def measure_generate(
    server: ServerProcess, model: str, concurrency: int, plan: Plan, tokens_per_message: int = 0
) -> list[Record]:
    result = load_client(
        server,
        model,
        "--mode=generate",
        f"--concurrency={concurrency}",
        f"--warmup={plan.warmup_s}",
        f"--duration={plan.duration_s}",
        f"--max-tokens={plan.max_tokens}",
        f"--tokens-per-message={tokens_per_message}",
        budget_s=plan.warmup_s + plan.duration_s,
    )
    return [
        Record(
            server.name,
            GENERATE_GROUPED if tokens_per_message > 1 else GENERATE,
            concurrency=concurrency,
            tokens_per_s=result["tokens_per_s"],
            p50_ms=result["p50_ms"],
            p99_ms=result["p99_ms"],
            count=result["count"],
            duration_s=plan.duration_s,
            extra={
                "errors": result["errors"],
                "max_tokens_per_call": plan.max_tokens,
                "tokens_per_message": tokens_per_message,
                "latency": "gap between response messages",
            },
        )
    ]


def measure_prompt(server: ServerProcess, model: str, concurrency: int, plan: Plan) -> list[Record]:
    """One session (``concurrency`` is 1): the prompt in one Step, then token by token."""
    result = load_client(
        server,
        model,
        "--mode=prompt",
        f"--tokens={plan.prompt_tokens}",
        f"--repeats={plan.prompt_repeats}",
        f"--duration={plan.single_steps_budget_s}",
        budget_s=plan.single_steps_budget_s * 2,
    )
    one, single = result["one_call"], result["single_steps"]
    return [
        Record(
            server.name,
            PROMPT_ONE_CALL,
            concurrency=concurrency,
            prompt_tokens=plan.prompt_tokens,
            p50_ms=one["p50_ms"],
            p99_ms=one["p99_ms"],
            total_ms=one["p50_ms"],
            count=one["count"],
        ),
        Record(
            server.name,
            PROMPT_SINGLE_STEPS,
            concurrency=concurrency,
            prompt_tokens=plan.prompt_tokens,
            p50_ms=single["p50_ms"],
            p99_ms=single["p99_ms"],
            total_ms=single["total_ms"],
            count=single["count"],
            extra={"latency": "per unary Step call"},
        ),
    ]


def measure_idle_memory(server: ServerProcess, spec: ModelSpec, plan: Plan) -> list[Record]:
    """RSS of a fresh server before, halfway through and after ``plan.idle_sessions``
    sessions are opened (and left idle), in two equal batches; the settle pauses let the
    allocator and the server's loop go quiet.

    The 1M figure is extrapolated from the second half's cost per session (the
    marginal cost): the first sessions also pay once for buffers that do not grow with
    the count, and an average over them overstated the 1M figure (measured: 1,573 B per
    session averaged over 100,000, 1,466 B over 200,000)."""
    time.sleep(plan.settle_s * 4)
    before = rss_bytes(server.pid)
    halves = [plan.idle_sessions // 2, plan.idle_sessions - plan.idle_sessions // 2]
    sessions, seconds, errors, rss = 0, 0.0, [], []
    for count in halves:
        result = load_client(
            server,
            spec.name,
            "--mode=sessions",
            f"--count={count}",
            f"--duration={plan.idle_time_limit_s / 2}",
            budget_s=plan.idle_time_limit_s / 2,
        )
        sessions += int(result["sessions"])
        seconds += result["seconds"]
        errors += result["errors"]
        time.sleep(plan.settle_s * 4)
        rss.append((sessions, rss_bytes(server.pid)))
    (half, at_half), (_, after) = rss
    marginal = (after - at_half) / (sessions - half) if sessions > half else math.nan
    million = 1_000_000
    extrapolated = after + marginal * (million - sessions)
    return [
        Record(
            server.name,
            IDLE_MEMORY,
            sessions=sessions,
            rss_before_bytes=before,
            rss_after_bytes=after,
            bytes_per_session=(extrapolated - before) / million,
            state_bytes_per_session=spec.state_bytes,
            extra={
                "peak_rss_bytes": peak_rss_bytes(server.pid),
                "sessions_asked": plan.idle_sessions,
                "create_seconds": seconds,
                "half_sessions": half,
                "rss_half_bytes": at_half,
                "average_bytes_per_session": (after - before) / sessions if sessions else math.nan,
                "marginal_bytes_per_session": marginal,
                "extrapolated_1m_bytes": extrapolated,
                "target_1m_bytes": before + 1.5 * spec.state_bytes * million,
                "errors": errors,
            },
        )
    ]


def rnnserve_flags() -> set[str]:
    """The flags this rnnserve-server accepts, read from its --help (none if it fails:
    its start will fail too, and be recorded)."""
    try:
        done = subprocess.run(
            python_module("rnnserve_server", "--help"),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            cwd=REPO_ROOT,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        log.error("rnnserve-server --help failed: %s", exc)
        return set()
    return set(re.findall(r"--[a-z0-9][a-z0-9-]*", done.stdout))


def rnnserve_command(
    models: Path, flags: set[str], extra_args: Sequence[str], max_sessions: int
) -> list[str]:
    args = ["--models", str(models), "--host", "127.0.0.1", "--port", "0"]
    if "--shutdown-grace-s" in flags:
        args += ["--shutdown-grace-s", "0"]
    for flag in SESSION_LIMIT_FLAGS:
        if flag in flags:
            args += [flag, str(max_sessions)]
    if "--caller-tokens-per-s" in flags:
        # The load client is one caller: the server's throughput is measured, not the
        # token budget of one caller (at its default, 20,000 tokens/s, it refused the
        # StepMany and grouped-Generate windows' calls with RESOURCE_EXHAUSTED).
        args += ["--caller-tokens-per-s", "0"]
    return python_module("rnnserve_server", *args, *extra_args)


@dataclass
class Systems:
    """How each server was started, recorded beside the figures."""

    commands: dict[str, list[str]]
    rnnserve_configuration: dict[str, Any] | None = None
    rnnserve_flags: list[str] = dataclasses.field(default_factory=list)
    idle_cpu_percent: dict[str, float] = dataclasses.field(default_factory=dict)


MeasureFn = Callable[[ServerProcess, str, int, Plan], list[Record]]


def server_plan(plan: Plan) -> list[tuple[str, str, MeasureFn, int]]:
    """(server, scenario, measurement, sessions) in run order: each figure is taken of
    every server in turn, so the figures a ratio compares are taken close in time (the
    load of a shared machine drifts over minutes)."""
    todo: list[tuple[str, str, MeasureFn, int]] = []
    for n in plan.concurrencies:
        todo += [(name, LOCKSTEP, measure_lockstep, n) for name in SERVERS]
    n = plan.multiplexed_sessions
    todo += [(name, MULTIPLEXED, measure_multiplexed, n) for name in MULTIPLEXED_SYSTEMS]
    for n in plan.generate_concurrencies:
        todo += [(name, GENERATE, measure_generate, n) for name in SERVERS]
        # the generation targets allow several tokens per message
        todo.append((RNNSERVE, GENERATE_GROUPED, measure_generate_grouped, n))
    todo.append((RNNSERVE, PROMPT_ONE_CALL, measure_prompt, 1))
    return todo * plan.rounds


def idle_cpu_percent(servers: Sequence[ServerProcess], seconds: float) -> dict[str, float]:
    """CPU each server burns while nobody calls it: the servers wait side by side, and a
    busy idle one would slow the one being measured. Sampled after they have settled
    from starting."""
    time.sleep(seconds)
    before = {s.name: cpu_seconds(s.pid) for s in servers}
    time.sleep(seconds)
    return {
        s.name: round(100 * (cpu_seconds(s.pid) - before[s.name]) / seconds, 1) for s in servers
    }


def measure_servers(
    package: Path, spec: ModelSpec, plan: Plan, extra_args: Sequence[str], recorder: Recorder
) -> Systems:
    flags = rnnserve_flags()
    models = package.parent.parent
    commands = {
        ECHO: python_module("bench.echo_server"),
        BASELINE: python_module("bench.baseline_server", "--package", str(package)),
        RNNSERVE: rnnserve_command(models, flags, extra_args, DEFAULT_SESSION_LIMIT),
    }
    systems = Systems(commands, rnnserve_flags=sorted(flags))
    with contextlib.ExitStack() as stack:
        running: dict[str, ServerProcess] = {}
        for name in SERVERS:
            try:
                running[name] = stack.enter_context(serving(name, commands[name]))
            except ProcessFailed as exc:
                log.error("%s: %s", name, exc)
                recorder.records.append(Record(name, LOCKSTEP, error=str(exc)[-2000:]))
        if RNNSERVE in running:
            systems.rnnserve_configuration = running[RNNSERVE].configuration
        systems.idle_cpu_percent = idle_cpu_percent(list(running.values()), IDLE_CPU_WINDOW_S)
        for name, scenario, measure, n in server_plan(plan):
            if name in running:
                server = running[name]
                recorder.measure(
                    name,
                    scenario,
                    functools.partial(measure, server, spec.name, n, plan),
                    server=server,
                    concurrency=n,
                )

    memory_command = rnnserve_command(models, flags, extra_args, plan.idle_sessions + 1000)
    commands[f"{RNNSERVE} ({IDLE_MEMORY})"] = memory_command
    try:
        with serving(RNNSERVE, memory_command) as server:
            recorder.measure(
                RNNSERVE,
                IDLE_MEMORY,
                functools.partial(measure_idle_memory, server, spec, plan),
                server=server,
            )
    except ProcessFailed as exc:
        recorder.records.append(Record(RNNSERVE, IDLE_MEMORY, error=str(exc)[-2000:]))
    return systems


def measure_redis_store(
    package: Path, spec: ModelSpec, plan: Plan, extra_args: Sequence[str], recorder: Recorder
) -> dict[str, list[str]]:
    """rnnserve with its sessions in a real redis-server (Debian's, on a Unix socket),
    stepped in lockstep as the in-memory figures are; skipped where Redis is missing."""
    n = plan.redis_sessions
    with contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rnnserve-redis-")))
        try:
            redis = stack.enter_context(RedisServer(scratch))
        except MissingProgram as exc:
            skipped = Record(RNNSERVE, LOCKSTEP_REDIS, concurrency=n, skipped=str(exc))
            recorder.records.append(skipped)
            return {}
        keys = scratch / "state.keys"  # a shared store's records are signed (issue 17)
        keys.write_text(secrets.token_hex(32) + "\n", encoding="utf-8")
        command = rnnserve_command(
            package.parent.parent,
            rnnserve_flags(),
            [*extra_args, "--session-store", redis.url, "--state-keys-file", str(keys)],
            DEFAULT_SESSION_LIMIT,
        )
        try:
            server = stack.enter_context(serving(RNNSERVE, command))
        except ProcessFailed as exc:
            error = str(exc)[-2000:]
            recorder.records.append(Record(RNNSERVE, LOCKSTEP_REDIS, concurrency=n, error=error))
            return {f"{RNNSERVE} (redis store)": command}
        for _ in range(plan.rounds):
            recorder.measure(
                RNNSERVE,
                LOCKSTEP_REDIS,
                functools.partial(
                    _measure_steps, server, spec.name, n, plan,
                    mode="lockstep", scenario=LOCKSTEP_REDIS, extra={"store": "redis"},
                ),
                server=server,
                concurrency=n,
            )  # fmt: skip
    return {f"{RNNSERVE} (redis store)": command}


def measure_vocabularies(
    cache: Path, plan: Plan, extra_args: Sequence[str], recorder: Recorder
) -> dict[str, list[str]]:
    """Word models of each vocabulary: raw step-graph runs at batch 1 and 64 (one worker
    per package), then one rnnserve serving all of them, stepped in lockstep (top 5)."""
    specs = {
        words: ModelSpec(name=f"word-{vocabulary_label(words)}", hidden_size=hidden, words=words)
        for words, hidden in plan.vocabularies
    }
    root = cache / "vocabularies"
    packages = {words: ensure_package(root, spec) for words, spec in specs.items()}
    batches = ",".join(map(str, plan.vocabulary_sessions))

    def raw(words: int) -> list[Record]:
        result = run_worker(
            "bench.raw",
            ["--package", str(packages[words]), "--batches", batches, "--sampling-batches", "",
             "--warmup", str(min(plan.warmup_s, 0.5)), "--duration", str(plan.raw_duration_s),
             "--prompt-tokens", "0"],
            timeout_s=WORKER_GRACE_S * 3,
        )  # fmt: skip
        extra = {"words": words, "hidden_size": specs[words].hidden_size}
        return [raw_step_record(r, vocabulary_scenario(words), extra) for r in result["step"]]

    for words in specs:
        recorder.measure(RAW, vocabulary_scenario(words), functools.partial(raw, words))
    command = rnnserve_command(root / "models", rnnserve_flags(), extra_args, DEFAULT_SESSION_LIMIT)
    try:
        with serving(RNNSERVE, command) as server:
            for words, spec in specs.items():
                for n in plan.vocabulary_sessions:
                    steps = functools.partial(
                        _measure_steps,
                        server,
                        spec.name,
                        n,
                        plan,
                        mode="lockstep",
                        scenario=vocabulary_scenario(words),
                        extra={"words": words, "hidden_size": spec.hidden_size},
                    )
                    recorder.measure(
                        RNNSERVE, vocabulary_scenario(words), steps, server=server, concurrency=n
                    )
    except ProcessFailed as exc:
        recorder.records.append(Record(RNNSERVE, VOCABULARY, error=str(exc)[-2000:]))
    return {"rnnserve (vocabularies)": command}


# ---------------------------------------------------------------- the run


def _display_command(command: Sequence[str]) -> str:
    """As run from the repository root: paths inside it made relative."""
    return shlex.join(arg.replace(f"{REPO_ROOT}{os.sep}", "") for arg in command)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def run(plan: Plan, cache: Path, extra_args: Sequence[str], quick: bool) -> dict[str, Any]:
    started, started_at = time.perf_counter(), _now()
    load_at_start = load_average()
    spec = ModelSpec()
    package = ensure_package(cache, spec)
    recorder = Recorder(plan.settle_s)
    # Raw onnxruntime at the start and again at the end, the better of the two kept: on a
    # shared machine one run alone can land in a load spike and flatter every "vs raw"
    # (the servers' figures are taken in rounds for the same reason).
    recorder.measure(RAW, RAW_STEP, functools.partial(measure_raw, package, plan))
    systems = measure_servers(package, spec, plan, extra_args, recorder)
    systems.commands.update(measure_redis_store(package, spec, plan, extra_args, recorder))
    recorder.measure(RAW, RAW_STEP, functools.partial(measure_raw, package, plan))
    systems.commands.update(measure_vocabularies(cache, plan, extra_args, recorder))
    recorder.records = best_runs(recorder.records)
    manifest = json.loads((package / "manifest.json").read_text(encoding="utf-8"))
    return {
        "schema_version": SCHEMA_VERSION,
        "command": shlex.join(sys.orig_argv),
        "quick": quick,
        "started": started_at,
        "finished": _now(),
        "wall_s": round(time.perf_counter() - started, 1),
        "machine": {
            **machine_info(),
            "load_average_start": load_at_start,
            "load_average_end": load_average(),
        },
        "model": {
            "package": _display_command([str(package)]),
            "cell": manifest["cell"],
            "layers": manifest["layers"],
            "hidden_size": manifest["hidden_size"],
            "vocabulary": manifest["tokenizer"]["size"],
            "graphs": sorted(manifest["graphs"]),
            "state_bytes": spec.state_bytes,
        },
        "plan": dataclasses.asdict(plan),
        "systems": {
            "commands": {k: _display_command(v) for k, v in systems.commands.items()},
            "rnnserve_configuration": systems.rnnserve_configuration,
            "rnnserve_flags": systems.rnnserve_flags,
            "idle_cpu_percent": systems.idle_cpu_percent,
            "load_client": "one process, asyncio + grpc.aio, one channel; lockstep: one "
            "StepStream per session, one token per message, top_k 5 (the default)",
        },
        "records": [r.to_json() for r in recorder.records],
    }


def write_outputs(result: dict[str, Any], out: Path, docs: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "latest.json"
    scratch = out / "latest.json.tmp"
    scratch.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    os.replace(scratch, json_path)
    plot_path = out / "throughput.png"
    plot.write_plot(result, plot_path)
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text(report.render(result, json_path, plot_path, docs), encoding="utf-8")
    log.info("wrote %s, %s and %s", json_path, plot_path, docs)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure rnnserve against an echo server, a batch-1 onnxruntime server "
        "and raw onnxruntime; write bench/results/latest.json, docs/benchmarks.md and "
        "bench/results/throughput.png.",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results")
    parser.add_argument("--docs", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="model package cache")
    parser.add_argument("--warmup", type=float, help="seconds before each measured window")
    parser.add_argument("--duration", type=float, help="seconds of each measured window")
    parser.add_argument("--idle-sessions", type=int, help="sessions for the memory figure")
    parser.add_argument(
        "--rnnserve-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="extra rnnserve-server flag, e.g. --rnnserve-arg=--workers=4 (repeatable)",
    )
    return parser.parse_args(argv)


def _plan(args: argparse.Namespace) -> Plan:
    plan = QUICK if args.quick else Plan()
    changes = {
        key: value
        for key, value in (
            ("warmup_s", args.warmup),
            ("duration_s", args.duration),
            ("idle_sessions", args.idle_sessions),
        )
        if value is not None
    }
    if args.idle_sessions is not None:
        # room for the slowest creation rate seen on 2 cores (about 1,000 per second)
        changes["idle_time_limit_s"] = max(plan.idle_time_limit_s, args.idle_sessions / 500)
    return dataclasses.replace(plan, **changes)


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = run(_plan(args), args.cache, args.rnnserve_arg, args.quick)
    write_outputs(result, args.out, args.docs)
    failed = [r for r in result["records"] if r["error"]]
    log.info("done in %.0f s; %d measurement(s) failed", result["wall_s"], len(failed))
    if failed:
        sys.exit(1)
