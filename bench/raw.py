"""Raw in-process onnxruntime on the package's graphs, run as its own process: what the
model costs without any server or transport.

- step: the step graph at batch B, the state fed back, for a fixed time;
- sampling: the same plus numpy sampling of one token per row, fed back as the next input;
- prompt: a T-token prompt through the step graph token by token at batch 1, and through
  the sequence graph in one run where the package has one.

    python -m bench.raw --package DIR [--batches 1,8,64,256] ...

Prints one JSON object on the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.load_client import TOKEN_CYCLE
from bench.records import percentiles_ms
from bench.stepgraph import FloatArray, IntArray, StepGraph, sample_rows

MAX_RUNS = 10_000_000
FIRST_TOKEN = 40


def timed_loop(
    run: Callable[[], None], warmup_s: float, duration_s: float
) -> tuple[int, float, list[float]]:
    """Call ``run`` for ``warmup_s`` unmeasured, then ``duration_s`` measured.

    Returns the measured runs, the measured seconds and each run's seconds.
    """
    warm_until = time.perf_counter() + warmup_s
    for _ in range(MAX_RUNS):
        if time.perf_counter() >= warm_until:
            break
        run()
    times: list[float] = []
    started = time.perf_counter()
    end = started + duration_s
    for _ in range(MAX_RUNS):
        before = time.perf_counter()
        if before >= end:
            break
        run()
        times.append(time.perf_counter() - before)
    return len(times), time.perf_counter() - started, times


def step_throughput(
    graph: StepGraph, batch: int, warmup_s: float, duration_s: float, sample: bool
) -> dict[str, Any]:
    """Runs of the step graph at ``batch`` with the state (and, sampling, the tokens) fed
    back; steps/s (or tokens/s) = batch x runs/s.

    Not sampling, each row gets the tokens the load client sends its sessions: its own,
    changing every step (one token for every row runs faster than the servers' load:
    onnxruntime's element-wise kernels branch on the values)."""
    rng = np.random.default_rng(batch)
    tokens: IntArray = np.full(batch, FIRST_TOKEN, dtype=np.int64)
    state: FloatArray = graph.initial(batch)
    inputs = [
        np.array([TOKEN_CYCLE[(row * 7 + step) % len(TOKEN_CYCLE)] for row in range(batch)])
        for step in range(len(TOKEN_CYCLE))
    ]
    steps = 0

    def run() -> None:
        nonlocal tokens, state, steps
        if not sample:
            tokens = inputs[steps % len(inputs)]
            steps += 1
        logits, state = graph.step(tokens, state)
        if sample:
            tokens = sample_rows(logits, rng)

    runs, seconds, times = timed_loop(run, warmup_s, duration_s)
    p50, p99 = percentiles_ms(times)
    rate = batch * runs / seconds
    return {
        "batch": batch,
        "per_s": rate,
        "runs": runs,
        "duration_s": seconds,
        "p50_ms": p50,
        "p99_ms": p99,
    }


def prompt_times(
    graph: StepGraph, tokens: int, repeats: int
) -> tuple[list[float], list[float] | None]:
    """Seconds to feed a ``tokens``-long prompt to one session: by the step graph token by
    token, and by the sequence graph in one run (None without one); after one warm-up."""
    ids = np.array([4 + i % 96 for i in range(tokens)], dtype=np.int64)
    step_s: list[float] = []
    for _ in range(repeats + 1):
        state = graph.initial(1)
        started = time.perf_counter()
        for token in ids:
            _, state = graph.step(token.reshape(1), state)
        step_s.append(time.perf_counter() - started)
    if graph.sequence_session is None:
        return step_s[1:], None
    sequence_s: list[float] = []
    for _ in range(repeats + 1):
        started = time.perf_counter()
        graph.run_sequence(ids, graph.initial(1))
        sequence_s.append(time.perf_counter() - started)
    return step_s[1:], sequence_s[1:]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--package", type=Path, required=True)
    parser.add_argument("--batches", type=_ints, default=[1, 8, 64, 256])
    parser.add_argument("--sampling-batches", type=_ints, default=[1, 64])
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--prompt-tokens", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads; 0: default")
    args = parser.parse_args(argv)

    graph = StepGraph.load(args.package, args.threads)
    step_s, sequence_s = (
        prompt_times(graph, args.prompt_tokens, args.repeats) if args.prompt_tokens else ([], None)
    )
    result: dict[str, Any] = {
        "threads": args.threads,
        "step": [
            step_throughput(graph, b, args.warmup, args.duration, sample=False)
            for b in args.batches
        ],
        "sampling": [
            step_throughput(graph, b, args.warmup, args.duration, sample=True)
            for b in args.sampling_batches
        ],
        "prompt_step_loop": dict(zip(("p50_ms", "p99_ms"), percentiles_ms(step_s), strict=True)),
        "prompt_sequence": (
            None
            if sequence_s is None
            else dict(zip(("p50_ms", "p99_ms"), percentiles_ms(sequence_s), strict=True))
        ),
        "prompt_tokens": args.prompt_tokens,
        "repeats": args.repeats,
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
