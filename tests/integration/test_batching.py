"""The cross-session batcher: batched outputs equal solo ones, order and isolation hold."""

from __future__ import annotations

import asyncio
import gc

import numpy as np
import pytest
from support import ServerThread, assert_top_close

from rnnserve import AsyncClient, Client

TEXTS = [f"session {i}: {'abcdefgh'[i % 8] * (i % 5 + 1)} the end" for i in range(24)]


def solo_distributions(client: Client, model: str, text: str) -> np.ndarray:
    with client.create_session(model) as session:
        return np.array([session.step(text=c, return_distribution=True).distribution for c in text])


async def concurrent_distributions(address: str, model: str) -> list[np.ndarray]:
    async with AsyncClient(address) as client:

        async def run(text: str) -> np.ndarray:
            session = await client.create_session(model)
            rows = []
            for c in text:
                result = await session.step(text=c, return_distribution=True)
                assert result.steps == len(rows) + 1  # each session's steps stay in order
                rows.append(result.distribution)
            await session.close()
            return np.array(rows)

        return list(await asyncio.gather(*(run(t) for t in TEXTS)))


def test_concurrent_sessions_are_batched_and_equal_their_solo_runs(
    models_dir, model_name: str
) -> None:  # type: ignore[no-untyped-def]
    """24 sessions stepping at once share runs, and each gets what it gets alone.

    Client and server share this process (and its GIL) here, and without a window the
    server's loop can take each arrival in a turn of its own (half the runs of this test
    did, on a busy 2-core machine), so the server waits 1 ms for more steps: sharing is
    then certain while every session has a step in flight. That the default (no window)
    shares runs across processes is what the benchmark's batch sizes show."""
    from support import server_config

    config = server_config(models_dir, batch_window_us=1000)
    with ServerThread(config) as server, Client(server.address) as client:
        batcher = server.run(
            lambda: server.running.engine.batcher(  # type: ignore[union-attr]
                server.running.engine.repository.get(model_name)  # type: ignore[union-attr]
            )
        )
        runs_before, steps_before = batcher.stats.runs, batcher.stats.steps
        together = asyncio.run(concurrent_distributions(server.address, model_name))
        runs = batcher.stats.runs - runs_before
        steps = batcher.stats.steps - steps_before
        assert steps == sum(len(t) for t in TEXTS)
        assert runs < steps and max(list(batcher.stats.recent_batch_sizes)[-runs:]) > 1
        for text, batched in zip(TEXTS, together, strict=True):
            alone = solo_distributions(client, model_name, text)
            # Different batch sizes may take different kernels: equal to float32 rounding,
            # and the same ranking of the top tokens.
            np.testing.assert_allclose(batched, alone, rtol=0, atol=2e-6)
            assert (batched.argmax(axis=1) == alone.argmax(axis=1)).all()


def test_a_cancelled_step_applies_nothing(
    server: ServerThread, client: Client, model_name: str
) -> None:
    async def cancel_some() -> None:
        async with AsyncClient(server.address) as aclient:
            sessions = [await aclient.create_session(model_name) for _ in range(16)]
            tasks = [asyncio.create_task(s.step(text="x")) for s in sessions]
            await asyncio.sleep(0)
            for task in tasks[::2]:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.sleep(0.2)
            for i, s in enumerate(sessions):
                # A cancelled step either never ran or ran and was dropped: never half.
                result = await s.step(text="y", return_distribution=True)
                assert result.steps in ((2,) if i % 2 else (1, 2))
                await s.close()

    asyncio.run(cancel_some())


@pytest.mark.parametrize("window_us", [2000])
def test_a_batch_window_collects_steps(models_dir, model_name: str, window_us: int) -> None:  # type: ignore[no-untyped-def]
    from support import server_config

    with ServerThread(server_config(models_dir, batch_window_us=window_us, max_batch=4)) as server:
        together = asyncio.run(concurrent_distributions(server.address, model_name))
        batcher = server.run(
            lambda: server.running.engine.batcher(  # type: ignore[union-attr]
                server.running.engine.repository.get(model_name)  # type: ignore[union-attr]
            )
        )
        assert max(batcher.stats.recent_batch_sizes) == 4  # max_batch caps a run
        with Client(server.address) as client:
            np.testing.assert_allclose(
                together[0], solo_distributions(client, model_name, TEXTS[0]), atol=2e-6
            )


@pytest.mark.parametrize("inline_run_us", [0, 1_000_000])
def test_runs_on_a_worker_thread_or_inline_give_the_same_outputs(
    models_dir, model_name: str, inline_run_us: int
) -> None:  # type: ignore[no-untyped-def]
    """inline_run_us 0: every run on a worker thread; 1 s: every run on the loop."""
    from support import server_config

    with ServerThread(server_config(models_dir, inline_run_us=inline_run_us)) as server:
        together = asyncio.run(concurrent_distributions(server.address, model_name))
        with Client(server.address) as client:
            for text, batched in zip(TEXTS[:4], together[:4], strict=True):
                alone = solo_distributions(client, model_name, text)
                np.testing.assert_allclose(batched, alone, rtol=0, atol=2e-6)


async def concurrent_generations(
    address: str, model: str, count: int, per_message: int
) -> list[list[tuple[int, int]]]:
    """``count`` seeded generations at once, each with steps of its own in between."""
    async with AsyncClient(address) as client:

        async def run(i: int) -> list[tuple[int, int]]:
            session = await client.create_session(model)
            seen: list[tuple[int, int]] = []
            async for chunk in client.generate(
                session.id,
                TEXTS[i][:3],
                max_tokens=20 + i,
                temperature=1.0,
                seed=i,
                tokens_per_message=per_message,
            ):
                seen += [(t.id, chunk.steps) for t in chunk.tokens]
            step = await session.step(text="x")
            seen.append((-1, step.steps))  # the state after the generation, one more step
            await session.close()
            return seen

        return list(await asyncio.gather(*(run(i) for i in range(count))))


@pytest.mark.parametrize("per_message", [0, 4])
def test_concurrent_generations_are_batched_and_equal_their_solo_runs(
    server: ServerThread, model_name: str, per_message: int
) -> None:
    engine = server.running.engine  # type: ignore[union-attr]
    chunker = server.call(engine.core.chunker(engine.repository.get(model_name)))
    assert chunker is not None
    runs_before = chunker.stats.runs
    together = asyncio.run(concurrent_generations(server.address, model_name, 12, per_message))
    sizes = list(chunker.stats.recent_batch_sizes)[-(chunker.stats.runs - runs_before) :]
    assert max(sizes) > 1  # generations advanced together
    alone = [
        asyncio.run(concurrent_generations(server.address, model_name, i + 1, per_message))[i]
        for i in (0, 5, 11)
    ]
    for i, solo in zip((0, 5, 11), alone, strict=True):
        assert together[i] == solo
        tokens = [t for t, _ in solo if t >= 0]
        steps_seen = [s for t, s in solo if t >= 0]
        assert len(tokens) <= 20 + i  # max_tokens, or the end token earlier
        assert steps_seen == sorted(steps_seen)  # one token fed per step, in order


def test_step_many_beyond_max_batch_takes_several_runs_with_the_same_outputs(
    models_dir, model_name: str
) -> None:  # type: ignore[no-untyped-def]
    """A StepMany message of 10 single-token steps with max_batch 4: runs of at most 4
    rows, every step answered, each equal to a session stepped alone."""
    from support import server_config

    from rnnserve import StepInput, StepResult

    tokens = [4 + 3 * i for i in range(10)]
    config = server_config(models_dir, max_batch=4)
    with ServerThread(config) as server, Client(server.address) as client:
        size = client.get_model(model_name).vocabulary.size
        sessions = [client.create_session(model_name) for _ in tokens]
        steps = [
            StepInput(s.id, tokens=[t], top_k=size) for s, t in zip(sessions, tokens, strict=True)
        ]
        (answer,) = client.step_many([steps])
        batcher = server.run(
            lambda: server.running.engine.batcher(  # type: ignore[union-attr]
                server.running.engine.repository.get(model_name)  # type: ignore[union-attr]
            )
        )
        assert max(batcher.stats.recent_batch_sizes) <= 4
        assert sum(batcher.stats.recent_batch_sizes) >= 10
        for outcome, token in zip(answer, tokens, strict=True):
            assert isinstance(outcome, StepResult) and outcome.steps == 1
            with client.create_session(model_name) as alone:
                expected = alone.step(tokens=[token], top_k=size)
            assert_top_close(outcome, expected)


def test_step_many_groups_share_runs_with_single_steps_and_drop_what_nobody_sees(
    server: ServerThread, model_name: str
) -> None:
    """On the engine (the server's loop, the real graph): a StepMany group queued with
    single steps of other sessions in the same turn shares their run and gives each row
    what a session stepped alone gets; a session closed while its group waits is
    answered NOT_FOUND and the rest of the group is applied; a group whose caller went
    away before its run applies nothing."""
    from rnnserve_server.errors import NotFound
    from rnnserve_server.inputs import TokenInput
    from rnnserve_server.stepresults import StepColumns

    tokens = [4 + 5 * i for i in range(8)]

    async def scenario() -> dict[str, object]:
        engine = server.running.engine  # type: ignore[union-attr]
        model = engine.repository.get(model_name)
        size = model.package.tokenizer.size
        grouped = [await engine.sessions.create(model) for _ in tokens]
        singles = [await engine.sessions.create(model) for _ in range(3)]
        idle = [await engine.sessions.create(model) for _ in range(4)]
        batcher = engine.batcher(model)
        runs_before = batcher.stats.runs
        many = asyncio.ensure_future(
            engine.steps.many(StepColumns([s.id for s in grouped], tokens, k=size))
        )
        alone = [
            asyncio.ensure_future(engine.steps.step(s, TokenInput(ids=[t]), k=size, full=False))
            for s, t in zip(singles, tokens[:3], strict=True)
        ]
        await asyncio.sleep(0)  # the group is queued (its locks held), the run not yet
        await engine.sessions.close(grouped[2])
        answer = await many
        outputs = await asyncio.gather(*alone)
        shared_runs = batcher.stats.runs - runs_before
        dropped = asyncio.ensure_future(
            engine.steps.many(StepColumns([s.id for s in idle], tokens[:4], k=size))
        )
        await asyncio.sleep(0)
        dropped.cancel()
        await asyncio.gather(dropped, return_exceptions=True)
        await asyncio.sleep(0.05)
        solo = []
        for token in tokens:  # each token fed to a fresh session, alone
            session = await engine.sessions.create(model)
            solo.append(
                await engine.steps.step(session, TokenInput(ids=[token]), k=size, full=False)
            )
        return {
            "rows": answer.in_order(),
            "singles": outputs,
            "solo": solo,
            "shared_runs": shared_runs,
            "idle_steps": [s.steps for s in idle],
        }

    result = server.call(scenario())
    rows = result["rows"]
    assert isinstance(rows[2], NotFound)
    assert result["shared_runs"] == 1  # 7 group rows and 3 single steps: one run
    assert result["idle_steps"] == [0, 0, 0, 0]
    for i, (got, expected) in enumerate(zip(rows, result["solo"], strict=True)):  # type: ignore[call-overload]
        if i == 2:
            continue
        assert got.steps == 1 and got.top.ids == expected.top.ids
        np.testing.assert_allclose(got.top.probabilities, expected.top.probabilities, atol=2e-6)
    for got, expected in zip(result["singles"], result["solo"], strict=False):  # type: ignore[call-overload]
        assert got.top.ids == expected.top.ids


def test_step_many_cancelled_between_its_chunks_releases_every_session_once(
    server: ServerThread, model_name: str
) -> None:
    """A StepMany group of more rows than one chunk (SLICE_ROWS) whose caller goes away
    while the chunks are in flight: every session's lock is released exactly once (none
    released twice, none left held), no task's error is left unretrieved, and every
    session steps again afterwards."""
    from rnnserve_server.inputs import TokenInput
    from rnnserve_server.stepping import SLICE_ROWS
    from rnnserve_server.stepresults import StepColumns

    count = SLICE_ROWS + 40

    async def scenario() -> dict[str, object]:
        engine = server.running.engine  # type: ignore[union-attr]
        model = engine.repository.get(model_name)
        loop = asyncio.get_running_loop()
        errors: list[dict[str, object]] = []
        before = loop.get_exception_handler()
        loop.set_exception_handler(lambda _loop, context: errors.append(context))
        try:
            sessions = [await engine.sessions.create(model) for _ in range(count)]
            outcomes = []
            for turns in range(4):  # cancelled after 0-3 turns of the loop
                many = asyncio.ensure_future(
                    engine.steps.many(StepColumns([s.id for s in sessions], [5] * count, k=3))
                )
                for _ in range(turns):
                    await asyncio.sleep(0)
                many.cancel()
                outcomes.append((await asyncio.gather(many, return_exceptions=True))[0])
                await asyncio.sleep(0.05)  # the chunks still in flight end
                gc.collect()  # an unretrieved task error is reported as its task is freed
            busy = sum(s.busy for s in sessions)
            after = [
                await engine.steps.step(s, TokenInput(ids=[7]), k=3, full=False)
                for s in sessions[:: SLICE_ROWS // 4]
            ]
        finally:
            loop.set_exception_handler(before)
        return {"errors": errors, "busy": busy, "after": after, "outcomes": outcomes}

    result = server.call(scenario())
    assert result["errors"] == []
    assert result["busy"] == 0
    assert all(out.steps >= 1 for out in result["after"])  # type: ignore[attr-defined]
