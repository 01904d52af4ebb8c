"""The performance targets (issues 6 and 16), judged on one run's records.

Each target compares figures of the same run; one that lacks a figure (a quick run, a
failed measurement, a graph the package does not have yet) is "n/a" with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

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
    Record,
)

PASS, MISS, NOT_MEASURED = "PASS", "MISS", "n/a"


@dataclass(frozen=True)
class Verdict:
    target: str
    required: str
    measured: str
    status: str


def find(
    records: Sequence[Record],
    system: str,
    scenario: str,
    *,
    concurrency: int | None = None,
    batch: int | None = None,
) -> Record | None:
    """The successful record of that measurement, if the run has one."""
    for r in records:
        if (
            r.system == system
            and r.scenario == scenario
            and (concurrency is None or r.concurrency == concurrency)
            and (batch is None or r.batch == batch)
            and r.error is None
            and r.skipped is None
        ):
            return r
    return None


def _ratio_verdict(
    target: str,
    required: str,
    measured: tuple[float, str] | None,
    *,
    limit: float,
    at_least: bool,
    missing: str,
) -> Verdict:
    """PASS when the measured ratio is on the right side of ``limit``; n/a without one."""
    if measured is None:
        return Verdict(target, required, missing, NOT_MEASURED)
    value, describe = measured
    ok = value >= limit if at_least else value <= limit
    return Verdict(target, required, describe, PASS if ok else MISS)


def _fmt(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.3g}"


def _at_least(
    target: str,
    limit: float,
    ours: Record | None,
    other: Record | None,
    *,
    rate: str,
    versus: str,
    missing: str,
) -> Verdict:
    """PASS when ours' ``rate`` (steps_per_s or tokens_per_s) is at least ``limit`` times
    the other's."""
    a = getattr(ours, rate) if ours else None
    b = getattr(other, rate) if other else None
    measured = None
    if a and b:
        value = a / b
        unit = rate.replace("_per_s", "/s")
        measured = value, f"{_fmt(a)} / {_fmt(b)} {unit} = {value:.2f}× {versus}"
    required = f"≥ {limit:.2f}× {versus}" if limit < 1 else f"≥ {limit:.1f}× {versus}"
    return _ratio_verdict(target, required, measured, limit=limit, at_least=True, missing=missing)


def lockstep_64(records: Sequence[Record]) -> Verdict:
    return _at_least(
        "64 lockstep sessions: rnnserve steps/s vs the echo ceiling",
        0.9,
        find(records, RNNSERVE, LOCKSTEP, concurrency=64),
        find(records, ECHO, LOCKSTEP, concurrency=64),
        rate="steps_per_s",
        versus="echo",
        missing="needs rnnserve and echo at 64 sessions",
    )


def one_session_latency(records: Sequence[Record]) -> Verdict:
    ours = find(records, RNNSERVE, LOCKSTEP, concurrency=1)
    echo = find(records, ECHO, LOCKSTEP, concurrency=1)
    raw = find(records, RAW, RAW_STEP, batch=1)
    measured = None
    if ours and echo and raw and ours.p50_ms and echo.p50_ms and raw.p50_ms:
        bound = echo.p50_ms + raw.p50_ms
        value = ours.p50_ms / bound
        measured = (
            value,
            (
                f"p50 {ours.p50_ms:.3f} ms vs echo {echo.p50_ms:.3f} + raw step "
                f"{raw.p50_ms:.3f} = {bound:.3f} ms ({value:.2f}×)"
            ),
        )
    return _ratio_verdict(
        "one session: p50 round trip",
        "≤ 1.2 × (echo p50 + raw batch-1 step)",
        measured,
        limit=1.2,
        at_least=False,
        missing="needs rnnserve and echo at 1 session and raw batch 1",
    )


def generation(records: Sequence[Record], sessions: int, share: float) -> Verdict:
    """rnnserve's best of one token per message and (where measured) several."""
    candidates = [
        r
        for scenario in (GENERATE, GENERATE_GROUPED)
        if (r := find(records, RNNSERVE, scenario, concurrency=sessions)) and r.tokens_per_s
    ]
    plural = "s" if sessions > 1 else ""
    return _at_least(
        f"{sessions} concurrent generation{plural}: tokens/s vs the raw batch-{sessions} "
        "sampling loop",
        share,
        max(candidates, key=lambda r: r.tokens_per_s or 0.0, default=None),
        find(records, RAW, RAW_SAMPLING, batch=sessions),
        rate="tokens_per_s",
        versus="raw",
        missing=f"needs rnnserve generate at {sessions} and raw sampling at batch {sessions}",
    )


def prompt_vs_sequence_graph(records: Sequence[Record]) -> Verdict:
    ours = find(records, RNNSERVE, PROMPT_ONE_CALL)
    raw = find(records, RAW, PROMPT_RAW_SEQUENCE)
    target = "a long prompt in one call vs the raw sequence graph"
    if raw is None:
        skipped = next(
            (r.skipped for r in records if r.scenario == PROMPT_RAW_SEQUENCE and r.skipped),
            "no raw sequence-graph figure",
        )
        loop = find(records, RAW, PROMPT_RAW_STEPS)
        if ours and loop and ours.total_ms and loop.total_ms:
            skipped += f" (vs the raw step-graph loop: {ours.total_ms / loop.total_ms:.2f}×)"
        return Verdict(target, "≤ 1.5× raw sequence graph", skipped, NOT_MEASURED)
    measured = None
    if ours and ours.total_ms and raw.total_ms:
        value = ours.total_ms / raw.total_ms
        measured = value, f"{ours.total_ms:.1f} ms vs {raw.total_ms:.1f} ms = {value:.2f}×"
    return _ratio_verdict(
        target,
        "≤ 1.5× raw sequence graph",
        measured,
        limit=1.5,
        at_least=False,
        missing="needs rnnserve's one-call prompt figure",
    )


def prompt_vs_single_steps(records: Sequence[Record]) -> Verdict:
    ours = find(records, RNNSERVE, PROMPT_ONE_CALL)
    single = find(records, RNNSERVE, PROMPT_SINGLE_STEPS)
    measured = None
    if ours and single and ours.total_ms and single.total_ms:
        value = single.total_ms / ours.total_ms
        measured = (
            value,
            (
                f"{ours.total_ms:.1f} ms in one call vs {single.total_ms:,.0f} ms as "
                f"{ours.prompt_tokens} Steps = {value:.1f}× faster"
            ),
        )
    return _ratio_verdict(
        "a long prompt in one call vs token-by-token Step calls",
        "≥ 20× faster",
        measured,
        limit=20.0,
        at_least=True,
        missing="needs both prompt figures",
    )


def idle_memory(records: Sequence[Record]) -> Verdict:
    ours = find(records, RNNSERVE, IDLE_MEMORY)
    measured = None
    if ours and ours.bytes_per_session and ours.state_bytes_per_session:
        value = ours.bytes_per_session / ours.state_bytes_per_session
        measured = (
            value,
            (
                f"{ours.bytes_per_session:,.0f} B/session vs {ours.state_bytes_per_session} B "
                f"of state = {value:.2f}× (at 1M, from the marginal cost measured up to "
                f"{ours.sessions:,} sessions)"
            ),
        )
    return _ratio_verdict(
        "1,000,000 idle sessions: memory above the process baseline",
        "≤ 1.5× state bytes",
        measured,
        limit=1.5,
        at_least=False,
        missing="needs the idle-memory figure",
    )


def lockstep_vs_baseline(records: Sequence[Record], sessions: int) -> Verdict:
    return _at_least(
        f"{sessions} lockstep session{'s' if sessions > 1 else ''}: steps/s vs the naive baseline",
        1.0,
        find(records, RNNSERVE, LOCKSTEP, concurrency=sessions),
        find(records, BASELINE, LOCKSTEP, concurrency=sessions),
        rate="steps_per_s",
        versus="baseline",
        missing=f"needs rnnserve and the baseline at {sessions} sessions",
    )


def generate_vs_baseline(records: Sequence[Record], sessions: int) -> Verdict:
    """Both streaming one token per message: the baseline cannot group them."""
    return _at_least(
        f"{sessions} concurrent Generate{'s' if sessions > 1 else ''} (one token per "
        "message) vs the naive baseline's",
        1.5,
        find(records, RNNSERVE, GENERATE, concurrency=sessions),
        find(records, BASELINE, GENERATE, concurrency=sessions),
        rate="tokens_per_s",
        versus="baseline",
        missing=f"needs rnnserve and the baseline generating at {sessions} sessions",
    )


def redis_store(records: Sequence[Record]) -> Verdict:
    skipped = next((r.skipped for r in records if r.scenario == LOCKSTEP_REDIS and r.skipped), None)
    return _at_least(
        "64 lockstep sessions with the Redis session store vs the in-memory store",
        0.8,
        find(records, RNNSERVE, LOCKSTEP_REDIS, concurrency=64),
        find(records, RNNSERVE, LOCKSTEP, concurrency=64),
        rate="steps_per_s",
        versus="in-memory",
        missing=skipped or "needs rnnserve at 64 sessions with both stores",
    )


def multiplexed_stream(records: Sequence[Record]) -> Verdict:
    return _at_least(
        "256 sessions multiplexed over one StepMany stream vs raw batch 64",
        0.7,
        find(records, RNNSERVE, MULTIPLEXED, concurrency=256),
        find(records, RAW, RAW_STEP, batch=64),
        rate="steps_per_s",
        versus="raw batch 64",
        missing="needs rnnserve multiplexed at 256 sessions and raw batch 64",
    )


LOCKSTEP_SESSIONS = (1, 8, 64, 256)
GENERATE_SESSIONS = (1, 64)


def evaluate(records: Sequence[Record]) -> list[Verdict]:
    return [
        *(lockstep_vs_baseline(records, n) for n in LOCKSTEP_SESSIONS),
        one_session_latency(records),
        generation(records, 1, 0.7),
        generation(records, 64, 0.5),
        *(generate_vs_baseline(records, n) for n in GENERATE_SESSIONS),
        multiplexed_stream(records),
        lockstep_64(records),
        redis_store(records),
        prompt_vs_sequence_graph(records),
        prompt_vs_single_steps(records),
        idle_memory(records),
    ]
