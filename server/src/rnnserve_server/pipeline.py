"""Calls of the session store's Lua scripts made in one turn of the event loop, sent to
Redis together: one round trip for a batch, not one per step.

Every call goes through a ``ScriptPipeline``. Calls made while the event loop runs one
turn (the sessions of a StepMany message, of a batch the batcher ran, of many callers'
calls at once) are queued, and at the end of that turn sent as pipelines of at most
``MAX_COMMANDS`` commands (their encoding and decoding run on the event loop: a bound
keeps each short), each on a connection of its own, all at once. Each caller gets its
own commands' results or errors. A Redis that has lost its scripts (restarted, SCRIPT
FLUSH) is given them again and the commands that met NOSCRIPT are sent again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

MAX_COMMANDS = 128

Call = tuple[Sequence[Any], Sequence[Any]]  # a script's KEYS and ARGV
Queued = tuple[Any, Sequence[Call], "asyncio.Future[list[Any]]"]  # script, calls, answer


class ScriptPipeline:
    """Coalesces script calls per turn of the event loop; counts the traffic."""

    def __init__(self, client: Any) -> None:
        self._client = client  # a redis.asyncio.Redis
        self._queue: list[Queued] = []
        self._sending: set[asyncio.Task[None]] = set()
        self.round_trips = 0
        self.commands = 0

    async def run(self, script: Any, calls: Sequence[Call]) -> list[Any]:
        """Run ``script`` (a registered redis Script) once per (keys, args) of ``calls``,
        in the next pipelines; per call its result, or the error Redis answered it with.
        A pipeline that fails as a whole (the connection) raises that error."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        self._queue.append((script, calls, future))
        if len(self._queue) == 1:
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        queued, self._queue = self._queue, []
        batch: list[Queued] = []
        size = 0
        for item in queued:
            if batch and size + len(item[1]) > MAX_COMMANDS:
                self._start(batch)
                batch, size = [], 0
            batch.append(item)
            size += len(item[1])
        self._start(batch)

    def _start(self, batch: list[Queued]) -> None:
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def close(self) -> None:
        """Cancel the pipelines on their way (their callers see the cancellation)."""
        for task in list(self._sending):
            task.cancel()
        if self._sending:
            await asyncio.wait(self._sending)

    async def _send(self, batch: list[Queued]) -> None:
        commands = [(script, call) for script, calls, _ in batch for call in calls]
        try:
            results = await self._execute(commands)
        except asyncio.CancelledError:
            for *_, future in batch:
                future.cancel()
            raise
        except Exception as error:  # the connection failed: every call of the batch with it
            for *_, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        at = 0
        for _, calls, future in batch:
            if not future.done():  # a caller that went away meanwhile is not waiting
                future.set_result(results[at : at + len(calls)])
            at += len(calls)

    async def _execute(self, commands: list[tuple[Any, Call]]) -> list[Any]:
        import redis.exceptions

        results = await self._pipelined(commands)
        lost = [i for i, r in enumerate(results) if isinstance(r, redis.exceptions.NoScriptError)]
        if lost:
            for script in {id(commands[i][0]): commands[i][0] for i in lost}.values():
                await self._client.script_load(script.script)
            again = await self._pipelined([commands[i] for i in lost])
            for i, result in zip(lost, again, strict=True):
                results[i] = result
        return results

    async def _pipelined(self, commands: list[tuple[Any, Call]]) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            for script, (keys, args) in commands:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            results: list[Any] = await pipe.execute(raise_on_error=False)
        self.round_trips += 1
        self.commands += len(commands)
        return results
