"""Generation by chunks of the generation graph against the reference path (one step-graph
run per token, sampled in numpy: ``generate_chunk_tokens`` 0): the same tokens for the
same seeds, the same session state and generator afterwards, the same cut-off points."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import ServerThread, server_config

from rnnserve_server.engine import Engine
from rnnserve_server.generating import GenerateOptions
from rnnserve_server.inputs import TokenInput

PROMPT = "The "
# (temperature, top_k, top_p): plain, greedy and both ranked kinds, and their mixes.
PARAMETERS = [
    (1.0, 0, None),
    (0.6, 0, None),
    (2.0, 0, None),
    (0.0, 0, None),
    (1.0, 5, None),
    (1.0, 0, 0.8),
    (0.8, 12, 0.6),
    (0.0, 3, 0.5),
]
CHUNKS = (0, 3, 16)  # 0: the reference; 3 and 16 cut generations at chunk boundaries


@pytest.fixture(scope="module")
def servers(models_dir: Path) -> Iterator[dict[int, ServerThread]]:
    with contextlib.ExitStack() as stack:
        yield {
            chunk: stack.enter_context(
                ServerThread(server_config(models_dir, generate_chunk_tokens=chunk))
            )
            for chunk in CHUNKS
        }


def _engine(server: ServerThread) -> Engine:
    assert server.running is not None
    return server.running.engine


async def _generate(
    engine: Engine,
    session: Any,
    options: GenerateOptions,
    prompt: str | None,
    *,
    take: int = 0,
    request_id: str = "",
) -> list[tuple[int | None, float, int, str | None, str]]:
    """(token, probability, steps, finish, matched) per event; ``take`` > 0: the caller
    goes away after that many events."""
    events = engine.generation.generate(
        session, TokenInput(text=prompt) if prompt else TokenInput(), options,
        request_id=request_id,
    )  # fmt: skip
    seen = []
    async with contextlib.aclosing(events):
        async for event in events:
            token = event.token
            seen.append(
                (
                    None if token is None else token.id,
                    0.0 if token is None else token.probability,
                    event.steps,
                    event.finish_reason,
                    event.matched_stop,
                )
            )
            if take and len(seen) == take:
                break
    return seen


async def _scenario(
    engine: Engine,
    model_name: str,
    seed: int,
    options: GenerateOptions,
    cut: int,
    *,
    request_id: str = "",
) -> dict[str, Any]:
    """A seeded session: a generation (cut off after ``cut`` events if > 0), another one
    continuing on the session's own generator, then a step; what each gave."""
    model = engine.repository.get(model_name)
    session = await engine.sessions.create(model, seed=seed)
    first = await _generate(engine, session, options, PROMPT, take=cut, request_id=request_id)
    after_first = (session.steps, engine.store.state(session).tobytes())
    rng_after_first = dict(session.rng.bit_generator.state)
    unseeded = GenerateOptions(max_tokens=20, temperature=options.temperature,
                               top_k=options.top_k, top_p=options.top_p)  # fmt: skip
    second = await _generate(engine, session, unseeded, None)
    step = await engine.steps.step(session, TokenInput(ids=[5]), k=5, full=True)
    await engine.sessions.close(session)
    return {
        "first": first,
        "after_first": after_first,
        "rng_after_first": rng_after_first,
        "second": second,
        "step": (step.steps, step.top.ids, step.distribution),
    }


def _same(got: dict[str, Any], expected: dict[str, Any]) -> None:
    for key in ("first", "second"):
        assert [e[:1] + e[2:] for e in got[key]] == [e[:1] + e[2:] for e in expected[key]], key
        np.testing.assert_allclose(
            [e[1] for e in got[key]], [e[1] for e in expected[key]], rtol=1e-9, atol=0
        )
    assert got["after_first"] == expected["after_first"]  # steps and state, bit for bit
    assert got["rng_after_first"] == expected["rng_after_first"]
    assert got["step"] == expected["step"]


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), PARAMETERS)
def test_chunks_give_the_reference_tokens_state_and_generator(
    servers: dict[int, ServerThread], model_name: str, temperature: float, top_k: int,
    top_p: float | None,
) -> None:  # fmt: skip
    for seed in (1, 2):
        options = GenerateOptions(max_tokens=37, temperature=temperature, top_k=top_k,
                                  top_p=top_p, seed=100 + seed)  # fmt: skip
        results = {
            chunk: server.call(_scenario(_engine(server), model_name, seed, options, 0))
            for chunk, server in servers.items()
        }
        for chunk in CHUNKS[1:]:
            _same(results[chunk], results[0])


@pytest.mark.parametrize("cut", [1, 2, 3, 4, 7, 16, 17])
@pytest.mark.parametrize(("per_message", "request_id"), [(1, ""), (4, ""), (1, "r-1")])
def test_a_caller_going_away_leaves_what_the_reference_leaves(
    servers: dict[int, ServerThread], model_name: str, cut: int, per_message: int,
    request_id: str,
) -> None:  # fmt: skip
    """Cut off after ``cut`` messages, mid-chunk or at its end: the same step count,
    state and generator as the reference (a request id rewinds the draw of the token
    sampled but not fed); the next generation draws the same tokens."""
    cut *= per_message  # the reference hands a message's events over at once
    for temperature in (1.0, 0.0):
        options = GenerateOptions(max_tokens=200, temperature=temperature,
                                  tokens_per_message=per_message)  # fmt: skip
        results = {
            chunk: server.call(
                _scenario(_engine(server), model_name, 7, options, cut, request_id=request_id)
            )
            for chunk, server in servers.items()
        }
        assert len(results[0]["first"]) == cut
        for chunk in CHUNKS[1:]:
            _same(results[chunk], results[0])


def test_stops_end_where_the_reference_ends(
    servers: dict[int, ServerThread], model_name: str
) -> None:
    """Stop strings, stop tokens, max_tokens and the end token, inside and at the edges
    of chunks."""
    reference = _engine(servers[0])
    free = servers[0].call(
        _scenario(reference, model_name, 3, GenerateOptions(max_tokens=60, seed=4), 0)
    )["first"]
    tokens = [t for t, *_ in free if t is not None]
    model = reference.repository.get(model_name)
    text = "".join(model.package.tokenizer.tokens[t] for t in tokens)
    cases = [
        GenerateOptions(max_tokens=60, seed=4, stop=[text[14:17]]),
        GenerateOptions(max_tokens=60, seed=4, stop=[text[2:4], "zzzz"]),
        GenerateOptions(max_tokens=60, seed=4, stop_token_ids=[tokens[15]]),
        GenerateOptions(max_tokens=60, seed=4, stop_token_ids=[tokens[2]]),
        GenerateOptions(max_tokens=16, seed=4),
        GenerateOptions(max_tokens=17, seed=4),
        GenerateOptions(max_tokens=1, seed=4),
    ]
    for options in cases:
        results = {
            chunk: server.call(_scenario(_engine(server), model_name, 3, options, 0))
            for chunk, server in servers.items()
        }
        assert results[0]["first"][-1][3] is not None
        for chunk in CHUNKS[1:]:
            _same(results[chunk], results[0])
    ends = 0
    for seed in range(60):  # generations that sample the end token, against the reference
        options = GenerateOptions(max_tokens=80, temperature=1.5, seed=seed)
        results = {
            chunk: server.call(_scenario(_engine(server), model_name, seed, options, 0))
            for chunk, server in servers.items()
        }
        ends += results[0]["first"][-1][3] == "end_token"
        for chunk in CHUNKS[1:]:
            _same(results[chunk], results[0])
    assert ends > 0


def test_concurrent_chunked_generations_share_runs(
    servers: dict[int, ServerThread], model_name: str
) -> None:
    server = servers[16]
    engine = _engine(server)

    async def together() -> list[list[Any]]:
        model = engine.repository.get(model_name)
        mixed = [GenerateOptions(max_tokens=50, temperature=t, top_k=k, top_p=p, seed=i)
                 for i, (t, k, p) in enumerate(PARAMETERS * 2)]  # fmt: skip
        sessions = [await engine.sessions.create(model, seed=i) for i in range(len(mixed))]
        return list(
            await asyncio.gather(
                *(_generate(engine, s, o, PROMPT) for s, o in zip(sessions, mixed, strict=True))
            )
        )

    chunker = server.call(engine.core.chunker(engine.repository.get(model_name)))
    assert chunker is not None
    runs_before = chunker.stats.runs
    batched = server.call(together())
    sizes = list(chunker.stats.recent_batch_sizes)[-(chunker.stats.runs - runs_before) :]
    assert max(sizes) > 1  # several generations in one run
    alone = [
        servers[0].call(
            _generate(
                _engine(servers[0]),
                servers[0].call(
                    _engine(servers[0]).sessions.create(
                        _engine(servers[0]).repository.get(model_name), seed=i
                    )
                ),
                GenerateOptions(max_tokens=50, temperature=t, top_k=k, top_p=p, seed=i),
                PROMPT,
            )
        )
        for i, (t, k, p) in enumerate(PARAMETERS * 2)
    ]
    for got, expected in zip(batched, alone, strict=True):
        assert [e[0] for e in got] == [e[0] for e in expected]


def test_an_output_too_sharp_to_sample_fails_both_paths_alike(
    servers: dict[int, ServerThread], model_name: str
) -> None:
    """A temperature so small that logits / temperature overflow: FAILED_PRECONDITION
    (never INTERNAL), the session as it was, by chunks and token by token."""
    from rnnserve_server.errors import FailedPrecondition

    for server in servers.values():
        engine = _engine(server)

        async def attempt(engine: Engine = engine) -> int:
            session = await engine.sessions.create(engine.repository.get(model_name), seed=1)
            with pytest.raises(FailedPrecondition, match="not finite"):
                await _generate(engine, session, GenerateOptions(temperature=1e-310), PROMPT)
            return session.steps

        assert server.call(attempt()) == len(PROMPT)  # the prompt was fed, nothing after


def test_a_step_whose_output_was_not_finite_ends_the_generation_after_its_token(
    servers: dict[int, ServerThread], model_name: str
) -> None:
    """A run's row whose draw at step 2 came from a non-finite output (its total NaN):
    the tokens fed up to it are delivered, then FAILED_PRECONDITION; nothing after."""
    from rnnserve_server.errors import FailedPrecondition
    from rnnserve_server.generation import Generation
    from rnnserve_server.sampling import SamplingParams

    engine = _engine(servers[16])

    async def run() -> tuple[list[Any], BaseException | None, int]:
        model = engine.repository.get(model_name)
        session = await engine.sessions.create(model, seed=1)
        job = Generation(session, SamplingParams(), session.rng, model.package.tokenizer,
                         max_tokens=50)  # fmt: skip
        job.start(5, 0.5, dict(session.rng.bit_generator.state))
        job.begin_chunk(4)
        states = np.zeros((4, model.runtime.layers, model.runtime.hidden), np.float32)
        job.load_chunk(np.array([6, 7, 8, 9]), np.full(4, 0.25), states,
                       np.array([1.0, 1.0, np.nan, 1.0]))  # fmt: skip
        events = []
        while job.buffered:
            events += job.take(1)
        seen = [(e.token.id if e.token else None, e.steps) for e in events]
        return seen, job.error, session.steps

    events, error, steps = servers[16].call(run())
    assert events == [(5, 1), (6, 2), (7, 3)]  # fed: 5, then 6 and 7 drawn from finite outputs
    assert isinstance(error, FailedPrecondition) and "not finite" in error.message
    assert steps == 3
