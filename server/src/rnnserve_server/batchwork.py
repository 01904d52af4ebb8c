"""The work the batcher (batcher.py) queues and runs: single steps, groups of steps,
and the runs of the step graph that take them (generations are ``generation.Generation``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, NamedTuple

from rnnserve_server.generation import Generation
from rnnserve_server.runtime import FloatArray, Inputs, IntArray
from rnnserve_server.session import Session
from rnnserve_server.statepool import StatePool

# One step's input x<t>: a token id, or a vector [n_x] of a model of vector inputs.
StepInput = int | FloatArray


def step_input(inputs: Inputs) -> StepInput:
    """The one input of ``inputs`` (ids [1] or vectors [1, n_x]) as a step takes it."""
    return inputs[0] if inputs.ndim > 1 else int(inputs[0])


@dataclass(eq=False, slots=True)
class PendingStep:
    """One session's single-token step, waiting for a run."""

    session: Session
    token: StepInput
    future: asyncio.Future[Any]
    queued_at: float
    k: int = -1  # >= 0: answer (top k, distribution if full) instead of the logits row
    full: bool = False
    trace: Any = None  # the caller's span context (tracing on)


@dataclass(eq=False, slots=True)
class StepGroup:
    """Single-token steps of distinct sessions whose locks the caller holds, answered
    together: the top k of each row, and the rows whose session was closed meanwhile."""

    sessions: list[Session]
    tokens: Inputs  # ids [n] or vectors [n, n_x]
    k: int
    future: asyncio.Future[RowsAnswer]
    queued_at: float
    passed: bool = False  # a run went without it: it goes first in the next
    trace: Any = None  # the caller's span context (tracing on)


class RowsAnswer(NamedTuple):
    """A group's answer: ids and probabilities [n, k] (most probable first), the values
    [n, R]; the rows whose session was closed while they waited (not applied, their
    outputs not valid)."""

    ids: IntArray
    probabilities: FloatArray
    values: FloatArray
    closed: list[int]


@dataclass(eq=False, slots=True)
class Run:
    """One run of the step graph: who is in it, where their states live. Rows are the
    batch's steps, then the groups' rows, then the jobs."""

    pool: StatePool
    batch: list[PendingStep]
    groups: list[StepGroup]
    jobs: list[Generation]
    slots: list[int]
    started: float
