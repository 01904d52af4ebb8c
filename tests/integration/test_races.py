"""Races of cancellation, expiry and close on many sessions (the Triton #7117 class).

No two live sessions may ever share a state slot, and a slot freed by one session must
never receive another session's late write: every surviving session's outputs must equal
its solo run, and the pool's bookkeeping must match the live sessions at the end.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import numpy as np
from support import ServerThread, server_config

from rnnserve import AsyncClient, Client, NotFound

TEXT = "stateful sessions never share slots"


async def churn(address: str, model: str, seed: int) -> dict[str, np.ndarray]:
    """Many sessions stepping while others are cancelled, closed mid-call or left to
    expire; returns the distributions of the sessions that ran to the end undisturbed."""
    rng = random.Random(seed)
    survivors: dict[str, np.ndarray] = {}
    async with AsyncClient(address, timeout=30) as client:

        async def survivor(index: int) -> None:
            # Its own long timeout: on a busy machine a gap between two of its steps
            # passed the server's 1 s default and the survivor expired with the victims.
            session = await client.create_session(model, idle_timeout_s=60)
            rows = []
            for char in TEXT:
                result = await session.step(text=char, return_distribution=True)
                rows.append(result.distribution)
                await asyncio.sleep(rng.random() * 0.002)
            survivors[f"s{index}"] = np.array(rows)
            await session.close()

        async def victim(kind: str) -> None:
            session = await client.create_session(model, idle_timeout_s=1)
            if kind == "expire":
                await session.step(text="abc")
                await asyncio.sleep(1.5 + rng.random())  # expires while others run
                try:
                    await session.step(text="d")
                except NotFound:
                    return
                raise AssertionError("an idle session outlived its timeout")
            if kind == "cancel":
                task = asyncio.create_task(session.step(text=TEXT))
                await asyncio.sleep(rng.random() * 0.003)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                await session.close()
                return
            generation = asyncio.create_task(_drain(session.generate(TEXT[:3], max_tokens=200)))
            await asyncio.sleep(rng.random() * 0.01)
            await client.close_session(session.id)  # close while generating
            await asyncio.gather(generation, return_exceptions=True)

        kinds = ["expire", "cancel", "close"] * 8
        await asyncio.gather(*(survivor(i) for i in range(16)), *(victim(kind) for kind in kinds))
    return survivors


async def _drain(stream) -> None:  # type: ignore[no-untyped-def]
    async for _ in stream:
        pass


def test_churn_never_mixes_states(models_dir: Path, model_name: str) -> None:
    config = server_config(models_dir, session_idle_timeout_s=1, max_session_idle_timeout_s=60)
    with ServerThread(config) as server:
        with Client(server.address) as client, client.create_session(model_name) as solo:
            expected = np.array(
                [solo.step(text=c, return_distribution=True).distribution for c in TEXT]
            )
        for seed in range(2):
            survivors = asyncio.run(churn(server.address, model_name, seed))
            assert len(survivors) == 16
            for rows in survivors.values():
                np.testing.assert_allclose(rows, expected, rtol=0, atol=2e-6)

        engine = server.running.engine  # type: ignore[union-attr]

        def bookkeeping() -> tuple[int, int, list[int]]:
            live = engine.store.open_sessions()
            pool = engine.store.pool(engine.repository.get(model_name))
            return len(live), pool.in_use, [s.slot for s in live]

        import time

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            live, in_use, slots = server.run(bookkeeping)
            if live == 0:
                break
            time.sleep(0.2)
        assert live == in_use == 0, "every slot is released exactly once"
        assert len(set(slots)) == len(slots)
