"""The load client, run as its own process: asyncio + grpc.aio over one channel.

Modes (one JSON object on the last line of stdout):

- ``lockstep``: N sessions, each over its own StepStream, one token per message, each
  waiting for its response before sending the next; steps completed in the measured
  window (after a warm-up), and their round trips.
- ``multiplexed``: N sessions over one StepMany stream, each message carrying one step
  of every session, one message in flight; steps completed in the window, and the round
  trips of the messages.
- ``generate``: N sessions, each calling Generate again and again; tokens received in the
  window, and the gaps between response messages.
- ``prompt``: one session; a prompt of T tokens in one Step (repeated), then the same
  prompt as T single-token unary Steps.
- ``sessions``: create N sessions and leave them open, or until their idle timeout
  (for the memory measurements).

Every loop is bounded by the window and by a step or call count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
import grpc.aio

from bench.records import percentiles_ms
from bench.stubs import EOF, RnnServeStub, connect
from rnnserve.v1 import rnnserve_pb2 as pb

T = TypeVar("T")

CONNECT_TIMEOUT_S = 30.0
CALL_TIMEOUT_S = 60.0
MAX_STEPS_PER_SESSION = 10_000_000
MAX_CALLS_PER_SESSION = 100_000
SETUP_INFLIGHT = 64
MODES = ("lockstep", "multiplexed", "generate", "prompt", "sessions")
# Token ids the lockstep and prompt inputs cycle through: printable characters of the
# benchmark vocabulary (ids 4..99), the same for every server.
TOKEN_CYCLE = tuple(range(4, 100))


@dataclass
class Window:
    """The measured interval, on time.perf_counter()."""

    start: float
    end: float

    @classmethod
    def after(cls, warmup_s: float, duration_s: float) -> Window:
        start = time.perf_counter() + warmup_s
        return cls(start, start + duration_s)

    def holds(self, t: float) -> bool:
        return self.start <= t <= self.end


@dataclass
class Tally:
    """What the workers of one run saw inside the window."""

    latencies_s: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: list[str] = field(default_factory=list)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"


async def bounded(
    count: int, inflight: int, make: Callable[[int], Awaitable[T]], deadline_s: float
) -> list[T]:
    """``make(i)`` for i in 0..count-1 by ``inflight`` workers; none starts after the
    deadline. Results in completion order."""
    stop_at = time.perf_counter() + deadline_s
    results: list[T] = []
    indices = iter(range(count))

    async def worker() -> None:
        for i in indices:
            if time.perf_counter() > stop_at:
                return
            results.append(await make(i))

    await asyncio.gather(*(worker() for _ in range(min(inflight, count))))
    return results


async def create_sessions(
    stub: RnnServeStub, model: str, count: int, deadline_s: float = 600.0, idle_timeout_s: int = 0
) -> list[str]:
    async def create(_: int) -> str:
        session = await stub.CreateSession(
            pb.CreateSessionRequest(model=model, idle_timeout_s=idle_timeout_s),
            timeout=CALL_TIMEOUT_S,
        )
        return session.session_id

    return await bounded(count, SETUP_INFLIGHT, create, deadline_s)


async def close_sessions(stub: RnnServeStub, session_ids: Sequence[str]) -> None:
    async def close(i: int) -> None:
        # the server may have dropped it already; nothing is measured here
        with contextlib.suppress(grpc.aio.AioRpcError):
            await stub.CloseSession(
                pb.CloseSessionRequest(session_id=session_ids[i]), timeout=CALL_TIMEOUT_S
            )

    await bounded(len(session_ids), SETUP_INFLIGHT, close, 60.0)


# ---------------------------------------------------------------- lockstep


async def _lockstep_session(
    stub: RnnServeStub, session_id: str, offset: int, window: Window, tally: Tally
) -> None:
    requests = [
        pb.StepRequest(
            session_id=session_id,
            tokens=pb.TokenIds(ids=[TOKEN_CYCLE[(offset + i) % len(TOKEN_CYCLE)]]),
        )
        for i in range(16)
    ]
    call = stub.StepStream()
    try:
        for i in range(MAX_STEPS_PER_SESSION):
            sent = time.perf_counter()
            if sent >= window.end:
                break
            await call.write(requests[i % len(requests)])
            response = await call.read()
            received = time.perf_counter()
            if response is EOF:
                raise RuntimeError("the server ended the stream early")
            if window.holds(received):
                tally.latencies_s.append(received - sent)
        await call.done_writing()
    except Exception as exc:
        tally.errors.append(_describe(exc))
    finally:
        call.cancel()


async def run_lockstep(
    stub: RnnServeStub, model: str, concurrency: int, *, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    session_ids = await create_sessions(stub, model, concurrency)
    tally = Tally()
    window = Window.after(warmup_s, duration_s)
    try:
        await asyncio.wait_for(
            asyncio.gather(
                *(
                    _lockstep_session(stub, sid, i * 7, window, tally)
                    for i, sid in enumerate(session_ids)
                )
            ),
            timeout=warmup_s + duration_s + CALL_TIMEOUT_S,
        )
    finally:
        await close_sessions(stub, session_ids)
    p50, p99 = percentiles_ms(tally.latencies_s)
    return {
        "steps_per_s": len(tally.latencies_s) / duration_s,
        "count": len(tally.latencies_s),
        "p50_ms": p50,
        "p99_ms": p99,
        "errors": tally.errors,
    }


# ---------------------------------------------------------------- multiplexed


async def run_multiplexed(
    stub: RnnServeStub, model: str, concurrency: int, *, warmup_s: float, duration_s: float
) -> dict[str, Any]:
    """One StepMany stream; every message carries one single-token step of each of the
    ``concurrency`` sessions and is answered before the next is sent."""
    session_ids = await create_sessions(stub, model, concurrency)
    messages = [
        pb.StepManyRequest(
            session_ids=session_ids,
            tokens=[TOKEN_CYCLE[(i * 7 + j) % len(TOKEN_CYCLE)] for i in range(concurrency)],
        )
        for j in range(4)
    ]
    tally = Tally()
    failed_steps = 0
    window = Window.after(warmup_s, duration_s)
    call = stub.StepMany()
    try:
        for i in range(MAX_STEPS_PER_SESSION):
            sent = time.perf_counter()
            if sent >= window.end:
                break
            await asyncio.wait_for(call.write(messages[i % len(messages)]), CALL_TIMEOUT_S)
            response = await asyncio.wait_for(call.read(), CALL_TIMEOUT_S)
            received = time.perf_counter()
            if not isinstance(response, pb.StepManyResponse):
                raise RuntimeError("the server ended the stream early")
            if window.holds(received):
                tally.latencies_s.append(received - sent)
                if len(response.steps) != concurrency:
                    raise RuntimeError(f"{len(response.steps)} steps answered, not {concurrency}")
                failed_steps += len(response.errors)
        await call.done_writing()
    except Exception as exc:
        tally.errors.append(_describe(exc))
    finally:
        call.cancel()
        await close_sessions(stub, session_ids)
    if failed_steps:
        tally.errors.append(f"{failed_steps} step(s) answered with a non-OK outcome")
    p50, p99 = percentiles_ms(tally.latencies_s)
    steps = len(tally.latencies_s) * concurrency
    return {
        "steps_per_s": steps / duration_s,
        "count": steps,
        "p50_ms": p50,
        "p99_ms": p99,
        "errors": tally.errors,
    }


# ---------------------------------------------------------------- generation


async def _generate_session(
    stub: RnnServeStub,
    session_id: str,
    *,
    seed: int,
    max_tokens: int,
    window: Window,
    tally: Tally,
    tokens_per_message: int = 0,
) -> None:
    for call_index in range(MAX_CALLS_PER_SESSION):
        if time.perf_counter() >= window.end:
            return
        call = stub.Generate(
            pb.GenerateRequest(
                session_id=session_id,
                max_tokens=max_tokens,
                temperature=1.0,
                seed=seed * MAX_CALLS_PER_SESSION + call_index,
                tokens_per_message=tokens_per_message,
            )
        )
        previous = time.perf_counter()
        try:
            async for response in call:
                received = time.perf_counter()
                if window.holds(received):
                    tally.tokens += len(response.tokens)
                    tally.latencies_s.append(received - previous)
                previous = received
                if received >= window.end:
                    break
        except Exception as exc:
            tally.errors.append(_describe(exc))
            return
        finally:
            call.cancel()


async def run_generate(
    stub: RnnServeStub,
    model: str,
    concurrency: int,
    *,
    warmup_s: float,
    duration_s: float,
    max_tokens: int,
    tokens_per_message: int = 0,
) -> dict[str, Any]:
    session_ids = await create_sessions(stub, model, concurrency)
    tally = Tally()
    window = Window.after(warmup_s, duration_s)
    try:
        await asyncio.wait_for(
            asyncio.gather(
                *(
                    _generate_session(
                        stub,
                        sid,
                        seed=i,
                        max_tokens=max_tokens,
                        window=window,
                        tally=tally,
                        tokens_per_message=tokens_per_message,
                    )
                    for i, sid in enumerate(session_ids)
                )
            ),
            timeout=warmup_s + duration_s + CALL_TIMEOUT_S,
        )
    finally:
        await close_sessions(stub, session_ids)
    p50, p99 = percentiles_ms(tally.latencies_s)
    return {
        "tokens_per_s": tally.tokens / duration_s,
        "count": tally.tokens,
        "p50_ms": p50,
        "p99_ms": p99,
        "errors": tally.errors,
    }


# ---------------------------------------------------------------- prompt


async def run_prompt(
    stub: RnnServeStub, model: str, tokens: int, repeats: int, budget_s: float
) -> dict[str, Any]:
    """The prompt in one Step (``repeats`` times after one warm-up call), then as
    single-token unary Steps (until all are sent or ``budget_s`` has passed)."""
    (session_id,) = await create_sessions(stub, model, 1)
    ids = [TOKEN_CYCLE[i % len(TOKEN_CYCLE)] for i in range(tokens)]
    whole = pb.StepRequest(session_id=session_id, tokens=pb.TokenIds(ids=ids))
    try:
        one_call_s: list[float] = []
        for _ in range(repeats + 1):
            sent = time.perf_counter()
            await stub.Step(whole, timeout=CALL_TIMEOUT_S)
            one_call_s.append(time.perf_counter() - sent)
        one_call_s = one_call_s[1:]

        singles = [pb.StepRequest(session_id=session_id, tokens=pb.TokenIds(ids=[i])) for i in ids]
        single_s: list[float] = []
        started = time.perf_counter()
        for request in singles:
            sent = time.perf_counter()
            await stub.Step(request, timeout=CALL_TIMEOUT_S)
            single_s.append(time.perf_counter() - sent)
            if time.perf_counter() - started > budget_s:
                break
        single_total_s = time.perf_counter() - started
    finally:
        await close_sessions(stub, [session_id])
    one_p50, one_p99 = percentiles_ms(one_call_s)
    single_p50, single_p99 = percentiles_ms(single_s)
    return {
        "one_call": {"p50_ms": one_p50, "p99_ms": one_p99, "count": len(one_call_s)},
        "single_steps": {
            "p50_ms": single_p50,
            "p99_ms": single_p99,
            "count": len(single_s),
            # scaled to the whole prompt if the budget cut the run short
            "total_ms": single_total_s * 1e3 * tokens / len(single_s),
        },
        "errors": [],
    }


# ---------------------------------------------------------------- idle sessions


async def run_sessions(
    stub: RnnServeStub, model: str, count: int, time_limit_s: float, idle_timeout_s: int = 0
) -> dict[str, Any]:
    started = time.perf_counter()
    created = await create_sessions(stub, model, count, time_limit_s, idle_timeout_s)
    elapsed = time.perf_counter() - started
    return {"sessions": len(created), "seconds": elapsed, "errors": []}


async def run_churn(
    stub: RnnServeStub, model: str, count: int, time_limit_s: float
) -> dict[str, Any]:
    """Create and close ``count`` sessions, SETUP_INFLIGHT at a time (one step each)."""
    errors: list[str] = []

    async def cycle(i: int) -> None:
        try:
            session = await stub.CreateSession(
                pb.CreateSessionRequest(model=model), timeout=CALL_TIMEOUT_S
            )
            await stub.Step(
                pb.StepRequest(
                    session_id=session.session_id,
                    tokens=pb.TokenIds(ids=[TOKEN_CYCLE[i % len(TOKEN_CYCLE)]]),
                ),
                timeout=CALL_TIMEOUT_S,
            )
            await stub.CloseSession(
                pb.CloseSessionRequest(session_id=session.session_id), timeout=CALL_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            errors.append(_describe(exc))

    started = time.perf_counter()
    await bounded(count, SETUP_INFLIGHT, cycle, time_limit_s)
    return {"sessions": count, "seconds": time.perf_counter() - started, "errors": errors[:20],
            "error_count": len(errors)}  # fmt: skip


# ---------------------------------------------------------------- process


async def _main(args: argparse.Namespace) -> dict[str, Any]:
    channel, stub = connect(args.address)
    try:
        await asyncio.wait_for(channel.channel_ready(), CONNECT_TIMEOUT_S)
        if args.mode == "lockstep":
            return await run_lockstep(
                stub, args.model, args.concurrency, warmup_s=args.warmup, duration_s=args.duration
            )
        if args.mode == "multiplexed":
            return await run_multiplexed(
                stub, args.model, args.concurrency, warmup_s=args.warmup, duration_s=args.duration
            )
        if args.mode == "generate":
            return await run_generate(
                stub,
                args.model,
                args.concurrency,
                warmup_s=args.warmup,
                duration_s=args.duration,
                max_tokens=args.max_tokens,
                tokens_per_message=args.tokens_per_message,
            )
        if args.mode == "prompt":
            return await run_prompt(stub, args.model, args.tokens, args.repeats, args.duration)
        if args.mode == "churn":
            return await run_churn(stub, args.model, args.count, args.duration)
        return await run_sessions(stub, args.model, args.count, args.duration, args.idle_timeout)
    finally:
        await channel.close(None)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--address", required=True, help="127.0.0.1:PORT")
    parser.add_argument("--model", required=True)
    parser.add_argument(
        "--mode", choices=("lockstep", "multiplexed", "generate", "prompt", "sessions", "churn")
    )
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds before the window")
    parser.add_argument(
        "--duration",
        type=float,
        default=5.0,
        help="the window (lockstep, multiplexed, generate), or the time budget (prompt, sessions)",
    )
    parser.add_argument("--max-tokens", type=int, default=512, help="per Generate call")
    parser.add_argument(
        "--tokens-per-message", type=int, default=0, help="GenerateRequest.tokens_per_message"
    )
    parser.add_argument("--tokens", type=int, default=2000, help="prompt length")
    parser.add_argument("--repeats", type=int, default=5, help="one-call prompt repeats")
    parser.add_argument("--count", type=int, default=1000, help="sessions to create")
    parser.add_argument(
        "--idle-timeout", type=int, default=0, help="(sessions) their idle_timeout_s; 0: default"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()
    result = asyncio.run(_main(args))
    result["client_wall_s"] = round(time.perf_counter() - started, 3)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
