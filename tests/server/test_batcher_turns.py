"""Whose work a run of the batcher takes first (batcher.StepBatcher._take): single steps
before groups, and a group passed over once before anything else."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from rnnserve_server.batcher import StepBatcher
from rnnserve_server.batchwork import PendingStep, StepGroup
from rnnserve_server.session import Session


def session(number: int) -> Session:
    return Session(id=f"s{number}", model=None, slot=number, idle_timeout_s=60)  # type: ignore[arg-type]


def test_single_steps_go_first_and_a_group_waits_at_most_one_run() -> None:
    async def scenario() -> list[tuple[list[str], list[int]]]:
        loop = asyncio.get_running_loop()
        with ThreadPoolExecutor(1) as executor:
            batcher = StepBatcher(None, lambda: None, executor, max_batch=4, window_s=0)  # type: ignore[arg-type]
            batcher._closed = True  # nothing scheduled: the test takes the runs itself

            def group(first: int) -> StepGroup:
                members = [session(first + i) for i in range(4)]
                return StepGroup(members, np.zeros(4, np.int64), 5, loop.create_future(), 0.0)

            def single(number: int) -> PendingStep:
                return PendingStep(session(number), 5, loop.create_future(), 1.0)

            for first in (100, 200):  # a message of 8 steps, queued before the steps below
                batcher._groups.append(group(first))
                batcher._group_rows += 4
            taken: list[tuple[list[str], list[int]]] = []
            for turn in range(4):
                batcher._pending.append(single(turn))  # another caller's step every run
                batch, groups, _ = batcher._take()
                taken.append(([i.session.id for i in batch], [len(g.sessions) for g in groups]))
            return taken

    taken: Any = asyncio.run(scenario())
    assert taken == [
        (["s0"], []),  # the step first: the group of 4 no longer fits, it is passed over
        ([], [4]),  # the passed group first; the step waits one run
        (["s1", "s2"], []),  # the next group, passed over in its turn
        ([], [4]),
    ]
