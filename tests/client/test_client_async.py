"""The asyncio client against the scripted toy server: same methods, same behaviour."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import pytest

import rnnserve
from rnnserve import AsyncClient, Client, StepInput

if TYPE_CHECKING:
    from conftest import ToyServer

T = TypeVar("T")


def run(toy: ToyServer, body: Callable[[AsyncClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with AsyncClient(toy.address, timeout=10) as client:
            return await body(client)

    return asyncio.run(main())


def public_methods(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def test_both_clients_offer_the_same_methods() -> None:
    assert public_methods(AsyncClient) == public_methods(Client)
    assert public_methods(rnnserve.AsyncSession) == public_methods(rnnserve.Session)
    for name in public_methods(Client) - {"address"}:
        sync, asynchronous = getattr(Client, name), getattr(AsyncClient, name)
        assert list(inspect.signature(sync).parameters) == list(
            inspect.signature(asynchronous).parameters
        ), name


def test_models_sessions_and_steps(toy: ToyServer) -> None:
    async def body(client: AsyncClient) -> None:
        models = await client.list_models()
        assert [m.name for m in models] == ["toy-char", "toy-labels"]
        assert await client.get_model("toy-char", 1) == models[0]
        async with await client.create_session("toy-char") as session:
            result = await session.step(text="ab", top_k=2)
            assert [t.text for t in result.top] == ["c", "d"]
            assert (await client.step(session.id, [0])).steps == 3
        assert await session.close() is None
        with pytest.raises(rnnserve.NotFound):
            await client.close_session(session.id)
        with pytest.raises(ValueError, match="exactly one"):
            await client.step(session.id)

    run(toy, body)


def test_async_with_opens_and_closes_sessions_directly(toy: ToyServer) -> None:
    async def body(client: AsyncClient) -> None:
        async with client.create_session("toy-char") as session:
            assert isinstance(session, rnnserve.AsyncSession)
            assert session.id in toy.servicer.sessions
            await session.step(text="ab")
        assert session.id not in toy.servicer.sessions  # closed on leaving the block
        with pytest.raises(rnnserve.NotFound):
            async with client.create_session("nope"):
                pass  # pragma: no cover - creating it fails
        with pytest.raises(RuntimeError, match="boom"):
            async with client.create_session("toy-char") as failing:
                raise RuntimeError("boom")
        assert failing.id not in toy.servicer.sessions  # closed on the way out too

    run(toy, body)


def test_step_stream_takes_async_and_plain_iterables(toy: ToyServer) -> None:
    async def body(client: AsyncClient) -> None:
        session = await client.create_session("toy-char")

        async def requests() -> AsyncIterator[StepInput]:
            for char in "abc":
                yield StepInput(session.id, text=char, top_k=1)

        from_async = [r.top[0].text async for r in client.step_stream(requests())]
        plain = [StepInput(session.id, text="x", top_k=1)]
        from_plain = [r.steps async for r in client.step_stream(plain)]
        assert (from_async, from_plain) == (["b", "c", "d"], [4])

    run(toy, body)


def test_step_stream_errors(toy: ToyServer) -> None:
    async def body(client: AsyncClient) -> None:
        session = await client.create_session("toy-char")
        received = []
        with pytest.raises(rnnserve.InvalidArgument):
            async for result in client.step_stream(
                [StepInput(session.id, text=t) for t in ("a", "!", "b")]
            ):
                received.append(result)
        assert len(received) == 1

        async def failing() -> AsyncIterator[StepInput]:
            yield StepInput(session.id, text="a")
            raise LookupError("no more input")

        with pytest.raises(LookupError, match="no more input"):
            async for _ in client.step_stream(failing()):
                pass

    run(toy, body)


def test_a_failed_request_keeps_its_status_while_requests_are_in_flight(toy: ToyServer) -> None:
    """grpc.aio replaces the server's status when a write fails after it (grpc/grpc#36066)."""

    async def body(client: AsyncClient) -> None:
        session = await client.create_session("toy-char")
        requests = [StepInput(session.id, text=t) for t in ["a", "!", *"b" * 30]]
        for _ in range(30):
            with pytest.raises(rnnserve.InvalidArgument, match="'!' is not in the vocabulary"):
                async for _result in client.step_stream(requests):
                    pass

    run(toy, body)


def test_generate_and_generate_text(toy: ToyServer) -> None:
    async def body(client: AsyncClient) -> None:
        session = await client.create_session("toy-char")
        chunks = [c async for c in session.generate("a", max_tokens=3, stop="d")]
        assert [c.text for c in chunks] == ["b", "c", "d"]
        assert (chunks[-1].finish_reason, chunks[-1].matched_stop) == ("stop-string", "d")
        assert await client.generate_text(session.id, max_tokens=2) == "ef"

    run(toy, body)


def test_leaving_async_for_early_cancels_generation(toy: ToyServer) -> None:
    toy.servicer.token_delay_s = 0.02

    async def body(client: AsyncClient) -> None:
        session = await client.create_session("toy-char")
        chunks = session.generate(max_tokens=1000)
        async for _ in chunks:
            break
        await chunks.aclose()

    run(toy, body)
    assert toy.servicer.recorded.generate_cancelled.wait(5)


def test_cancelling_the_task_cancels_generation(toy: ToyServer) -> None:
    toy.servicer.token_delay_s = 0.02

    async def body(client: AsyncClient) -> None:
        session = await client.create_session("toy-char")

        async def consume() -> None:
            async for _ in session.generate(max_tokens=1000):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(toy, body)
    assert toy.servicer.recorded.generate_cancelled.wait(5)


def test_async_timeouts_health_and_token(toy: ToyServer) -> None:
    toy.servicer.token_delay_s = 0.05

    async def main() -> None:
        async with AsyncClient(toy.address, token="abc") as client:
            assert await client.health() == "SERVING"
            assert await client.health("draining") == "NOT_SERVING"
            session = await client.create_session("toy-char")
            with pytest.raises(rnnserve.DeadlineExceeded):
                await session.generate_text(max_tokens=100, timeout=0.2)

    asyncio.run(main())
    assert toy.servicer.recorded.metadata[0]["authorization"] == "Bearer abc"
