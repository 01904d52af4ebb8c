"""One measurement, as written to ``bench/results/latest.json``, and latency percentiles.

Imported by the load client too, so it needs nothing beyond the standard library.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# systems
ECHO, BASELINE, RNNSERVE, RAW = "echo", "baseline", "rnnserve", "onnxruntime"
SERVERS = (ECHO, BASELINE, RNNSERVE)

# scenarios
LOCKSTEP = "lockstep"  # N sessions, each its own StepStream, one token per message
LOCKSTEP_REDIS = "lockstep-redis"  # the same, rnnserve's sessions in a Redis store
MULTIPLEXED = "multiplexed"  # N sessions' steps in each StepMany message, one stream
RAW_STEP = "raw-step"  # the step graph in-process at batch B, state fed back
GENERATE = "generate"  # N concurrent Generate calls, tokens/s aggregate
# rnnserve's Generate with GenerateRequest.tokens_per_message > 1 (the caller permits it)
GENERATE_GROUPED = "generate-grouped"
RAW_SAMPLING = "raw-sampling"  # step graph + numpy sampling at batch B, in-process
PROMPT_ONE_CALL = "prompt-one-call"  # one Step carrying the whole prompt
PROMPT_SINGLE_STEPS = "prompt-single-steps"  # the prompt as single-token unary Steps
PROMPT_RAW_STEPS = "prompt-raw-step-loop"  # the step graph token by token, in-process
PROMPT_RAW_SEQUENCE = "prompt-raw-sequence"  # one run of the sequence graph, in-process
IDLE_MEMORY = "idle-memory"  # resident memory per idle session
VOCABULARY = "vocabulary"  # word models of 10k-1M words: lockstep steps and raw runs


def vocabulary_label(words: int) -> str:
    """10000 -> "10k", 1000000 -> "1M"."""
    return f"{words // 1_000_000}M" if words >= 1_000_000 else f"{words // 1_000}k"


def vocabulary_scenario(words: int) -> str:
    """The scenario of one vocabulary size (its records are kept apart by it)."""
    return f"{VOCABULARY}-{words}"


SCENARIOS = (
    LOCKSTEP,
    LOCKSTEP_REDIS,
    MULTIPLEXED,
    RAW_STEP,
    GENERATE,
    GENERATE_GROUPED,
    RAW_SAMPLING,
    PROMPT_ONE_CALL,
    PROMPT_SINGLE_STEPS,
    PROMPT_RAW_STEPS,
    PROMPT_RAW_SEQUENCE,
    IDLE_MEMORY,
    VOCABULARY,
)


@dataclass
class Record:
    """One measurement. Fields that do not apply stay None."""

    system: str
    scenario: str
    concurrency: int | None = None  # concurrent sessions of the load client
    batch: int | None = None  # in-process batch size
    steps_per_s: float | None = None
    tokens_per_s: float | None = None
    p50_ms: float | None = None  # per step round trip, per run, per message or per call
    p99_ms: float | None = None
    count: int | None = None  # steps, tokens, runs or calls measured
    duration_s: float | None = None  # the measured window
    prompt_tokens: int | None = None
    total_ms: float | None = None  # a whole prompt, fed as the scenario says
    sessions: int | None = None  # idle sessions held
    rss_before_bytes: int | None = None
    rss_after_bytes: int | None = None
    bytes_per_session: float | None = None
    state_bytes_per_session: int | None = None
    skipped: str | None = None  # why the measurement could not be made
    error: str | None = None  # what failed, when it did
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Record:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def percentiles_ms(seconds: Sequence[float]) -> tuple[float | None, float | None]:
    """p50 and p99 of durations given in seconds, in milliseconds (linear interpolation
    between the closest ranks, as numpy's default)."""
    if not seconds:
        return None, None
    if len(seconds) == 1:
        return round(seconds[0] * 1e3, 4), round(seconds[0] * 1e3, 4)
    cuts = statistics.quantiles(seconds, n=100, method="inclusive")
    return round(cuts[49] * 1e3, 4), round(cuts[98] * 1e3, 4)
