"""What stepping takes in and gives back: a StepMany message's columns (``StepColumns``),
one step's output (``StepOutput``) and a message's answers (``StepManyAnswer``: blocks of
rows answered together as arrays, and single rows), shared by stepping and the fronts."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from rnnserve_server.errors import NotFound, ServiceError
from rnnserve_server.inputs import TokenInput, VectorInput
from rnnserve_server.runtime import FloatArray, IntArray
from rnnserve_server.sampling import Top


@dataclass(slots=True)
class StepOutput:
    steps: int
    consumed: int
    top: Top
    distribution: list[float] | None
    values: list[float] | None = None  # the model's real outputs (regression), if any
    logits: FloatArray | None = None  # the logits row itself, [K] (on request)


@dataclass(frozen=True)
class StepColumns:
    """The steps of a StepMany message, as the message carries them: columns, checked
    against each other by the transport. Step i is ``session_ids[i]`` fed the next
    ``value_counts[i]`` floats of ``vectors`` where that count is above 0, else
    ``lengths[i]`` tokens from ``tokens`` (one each where ``lengths`` is None), or
    ``texts[i]`` where its length is 0."""

    session_ids: Sequence[str]
    tokens: Sequence[int]
    lengths: Sequence[int] | None = None
    texts: Sequence[str] | None = None
    request_ids: Sequence[str] | None = None
    k: int | None = None
    vectors: Sequence[float] = ()
    value_counts: Sequence[int] | None = None

    def __len__(self) -> int:
        return len(self.session_ids)

    def value_count(self, index: int) -> int:
        return self.value_counts[index] if self.value_counts else 0

    def given(self, index: int, start: int, vector_start: int) -> TokenInput:
        """Step ``index``'s input, its tokens starting at ``start`` (its vectors' values
        at ``vector_start``)."""
        count = self.value_count(index)
        if count:
            return TokenInput(
                vectors=VectorInput(self.vectors[vector_start : vector_start + count])
            )
        length = 1 if self.lengths is None else self.lengths[index]
        if length:
            return TokenInput(ids=self.tokens[start : start + length])
        return TokenInput(text=self.texts[index] if self.texts else None)


@dataclass(slots=True)
class StepRows:
    """Single-input steps of one model answered together: the message's row numbers
    (ascending), each session's step count after it, the top k as arrays [n, k] and
    the values [n, R]."""

    rows: list[int]
    steps: list[int]
    ids: IntArray
    probabilities: FloatArray
    names: Sequence[str]
    values: FloatArray

    def outputs(self) -> Iterator[tuple[int, StepOutput]]:
        names = self.names
        values = self.values.tolist() if self.values.shape[1] else [None] * len(self.rows)
        for row, steps, ids, probabilities, row_values in zip(
            self.rows,
            self.steps,
            self.ids.tolist(),
            self.probabilities.tolist(),
            values,
            strict=True,
        ):
            yield row, StepOutput(steps, 1, Top(ids, probabilities, names), None, row_values)


@dataclass
class StepManyAnswer:
    """The answers to a StepMany message: blocks of rows answered together, and the
    rows answered one by one (an output or the error that failed that step alone)."""

    size: int
    blocks: list[StepRows] = field(default_factory=list)
    single: dict[int, StepOutput | ServiceError] = field(default_factory=dict)

    def whole(self) -> StepRows | None:
        """The blocks as one, where they answer every step, in order, of one model."""
        blocks = self.blocks
        if self.single or not blocks:
            return None
        first = blocks[0]
        if len(blocks) == 1:
            return first if len(first.rows) == self.size else None
        widths = first.ids.shape[1], first.values.shape[1]
        if any(
            b.names is not first.names or (b.ids.shape[1], b.values.shape[1]) != widths
            for b in blocks
        ):
            return None
        rows = [row for block in blocks for row in block.rows]
        if rows != list(range(self.size)):
            return None
        return StepRows(
            rows,
            [steps for block in blocks for steps in block.steps],
            np.concatenate([block.ids for block in blocks]),
            np.concatenate([block.probabilities for block in blocks]),
            first.names,
            np.concatenate([block.values for block in blocks]),
        )

    def in_order(self) -> list[StepOutput | ServiceError]:
        """Every row's outcome, in the message's order."""
        outcomes: dict[int, StepOutput | ServiceError] = dict(self.single)
        for block in self.blocks:
            outcomes.update(block.outputs())
        return [outcomes.get(i, NotFound("session was closed")) for i in range(self.size)]
