"""The asyncio client and the `rnnserve` command against the real server and tiny model.

The sync client's behaviour against the real server is covered in tests/integration; these
tests add the parts only the client side can show.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import pytest

import rnnserve
from rnnserve import AsyncClient, Client, StepInput
from rnnserve.cli import main

if TYPE_CHECKING:
    from support import ServerThread

T = TypeVar("T")
PROMPT = "The "


def run(server: ServerThread, body: Callable[[AsyncClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with AsyncClient(server.address, timeout=60) as client:
            return await body(client)

    return asyncio.run(main())


def test_async_client_gives_what_the_sync_client_gives(
    server: ServerThread, client: Client, model_name: str
) -> None:
    with client.create_session(model_name) as session:
        sync_step = session.step(text=PROMPT, top_k=3, return_distribution=True)
        sync_text = session.generate_text(max_tokens=20, temperature=0)

    async def body(aclient: AsyncClient) -> None:
        assert await aclient.list_models() == client.list_models()
        assert await aclient.health() == "SERVING"
        with pytest.raises(rnnserve.NotFound, match="the health service knows no service 'x'"):
            await aclient.health("x")
        async with await aclient.create_session(model_name) as session:
            assert await session.step(text=PROMPT, top_k=3, return_distribution=True) == (
                rnnserve.StepResult(
                    session.id,
                    sync_step.steps,
                    sync_step.consumed,
                    sync_step.top,
                    sync_step.distribution,
                )
            )
            assert await session.generate_text(max_tokens=20, temperature=0) == sync_text

    run(server, body)


def test_async_with_creates_and_forks_sessions_directly(
    server: ServerThread, model_name: str
) -> None:
    def open_sessions() -> int:
        return server.run(lambda: len(server.running.engine.store))  # type: ignore[union-attr]

    async def body(client: AsyncClient) -> None:
        before = open_sessions()
        async with client.create_session(model_name, seed=4) as session:
            await session.step(text=PROMPT)
            async with session.fork() as copy:
                assert open_sessions() == before + 2
                assert (await copy.step(text="a")).steps == len(PROMPT) + 1
            forked = await client.fork_session(session.id)  # awaited: a handle to keep
            assert open_sessions() == before + 2
            await forked.close()
        assert open_sessions() == before

    run(server, body)


def test_async_step_stream_keeps_order_and_state(server: ServerThread, model_name: str) -> None:
    async def body(client: AsyncClient) -> None:
        async with await client.create_session(model_name) as whole:
            expected = await whole.step(text=PROMPT, top_k=3)
        async with await client.create_session(model_name) as split:
            results = [
                r async for r in client.step_stream(StepInput(split.id, text=c) for c in PROMPT)
            ]
        assert [r.steps for r in results] == list(range(1, len(PROMPT) + 1))
        # A package with a sequence graph runs the whole prompt through it: the same
        # candidates, probabilities equal to float32 rounding.
        last = results[-1].top[:3]
        assert [t.id for t in last] == [t.id for t in expected.top]
        assert [t.probability for t in last] == pytest.approx(
            [t.probability for t in expected.top], abs=2e-6
        )

    run(server, body)


def test_async_stream_failure_keeps_the_servers_status(
    server: ServerThread, model_name: str
) -> None:
    """The real server is grpc.aio too; a failed request must not come back as INTERNAL."""

    async def body(client: AsyncClient) -> None:
        size = (await client.get_model(model_name)).vocabulary.size
        async with await client.create_session(model_name) as session:
            requests = [StepInput(session.id, tokens=[1]), StepInput(session.id, tokens=[size])]
            requests += [StepInput(session.id, tokens=[2])] * 30
            for _ in range(10):
                with pytest.raises(rnnserve.InvalidArgument, match=r"out of range|allowed"):
                    async for _result in client.step_stream(requests):
                        pass

    run(server, body)


def test_async_cancellation_frees_the_session(server: ServerThread, model_name: str) -> None:
    async def body(client: AsyncClient) -> None:
        async with await client.create_session(model_name) as session:
            chunks = session.generate(PROMPT, max_tokens=4000, temperature=1.0, seed=3)
            async for _ in chunks:
                break
            await chunks.aclose()
            # The cancelled generation released the session: the next call runs at once.
            result = await session.step(text="x", timeout=10)
            assert result.steps < 1000

    run(server, body)


def test_cli_end_to_end(
    server: ServerThread, model_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    address = ["--address", server.address]
    assert main([*address, "health"]) == 0
    assert capsys.readouterr().out == "SERVING\n"
    assert main([*address, "health", "--service", f"rnnserve.v1.RnnServe/{model_name}"]) == 0
    assert capsys.readouterr().out == "SERVING\n"
    assert main([*address, "health", "--service", "rnnserve.v1.RnnServe/nope"]) == 1
    assert capsys.readouterr().err.startswith(
        "error: NOT_FOUND: the health service knows no service 'rnnserve.v1.RnnServe/nope'; "
    )
    assert main([*address, "models", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert listed["name"] == model_name
    argv = ["generate", PROMPT, "--max-tokens", "25", "--temperature", "0", "--json"]
    assert main([*address, *argv]) == 0
    generated = json.loads(capsys.readouterr().out)
    assert generated["tokens"] <= 25 and generated["finish_reason"] in ("length", "end-token")
    assert main([*address, "generate", PROMPT, "--max-tokens", "25", "--temperature", "0"]) == 0
    assert capsys.readouterr().out == PROMPT + generated["text"] + "\n"
    assert main([*address, "step", PROMPT, "--top-k", "3"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 4


def test_cli_interactive_from_a_pipe(server: ServerThread, client: Client, model_name: str) -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "rnnserve", "--address", server.address, "interactive"],
        input=PROMPT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert (shown.returncode, shown.stderr) == (0, "")
    lines = shown.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [repr(c) for c in PROMPT]
    with client.create_session(model_name) as session:
        expected = session.step(text=PROMPT).top
    assert lines[-1].split("\t")[1] == " ".join(f"{t.text!r}:{t.probability:.4f}" for t in expected)
