"""The baseline anyone would write: grpc.aio, one onnxruntime run per session step at
batch 1 on the event loop, each session's state a numpy array in a dict.

Same service shape and same model package as rnnserve; no batching, no executor.

    python -m bench.baseline_server --package bench/.cache/models/bench-gru/1 [--port 0]
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from bench.comparison_server import (
    finish_reason,
    new_session_id,
    requested_top_k,
    token_ids,
    top_entries,
)
from bench.comparison_server import main as serve_main
from bench.stepgraph import FloatArray, StepGraph, sample_rows, softmax_rows, top_k_row
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc

DEFAULT_MAX_TOKENS = 64


class BaselineServicer(rnnserve_pb2_grpc.RnnServeServicer):
    def __init__(self, graph: StepGraph) -> None:
        self.graph = graph
        self.states: dict[str, FloatArray] = {}
        self.steps: dict[str, int] = {}
        self.rng = np.random.default_rng()

    async def _state(self, session_id: str, context: Any) -> FloatArray:
        state = self.states.get(session_id)
        if state is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"session {session_id!r} not found")
            raise AssertionError("abort raises")
        return state

    def _feed(self, session_id: str, state: FloatArray, ids: Sequence[int]) -> FloatArray:
        """Feed ids one by one; store the state; return the last logits [1, K]."""
        logits: FloatArray | None = None
        for token in ids:
            logits, state = self.graph.step(np.array([token], dtype=np.int64), state)
        assert logits is not None
        self.states[session_id] = state
        self.steps[session_id] += len(ids)
        return logits

    async def _answer(self, request: pb.StepRequest, context: Any) -> pb.StepResponse:
        state = await self._state(request.session_id, context)
        ids = token_ids(request)
        if not ids:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "input is empty")
        logits = self._feed(request.session_id, state, ids)
        k = min(requested_top_k(request), self.graph.outputs)
        ranked = top_k_row(softmax_rows(logits)[0], k) if k else []
        return pb.StepResponse(
            session_id=request.session_id,
            steps=self.steps[request.session_id],
            consumed=len(ids),
            top=top_entries(ranked, self.graph.vocabulary),
        )

    async def CreateSession(self, request: pb.CreateSessionRequest, context: Any) -> pb.Session:
        session_id = new_session_id()
        self.states[session_id] = self.graph.initial(1)
        self.steps[session_id] = 0
        return pb.Session(session_id=session_id, idle_timeout_s=600)

    async def CloseSession(
        self, request: pb.CloseSessionRequest, context: Any
    ) -> pb.CloseSessionResponse:
        self.states.pop(request.session_id, None)
        return pb.CloseSessionResponse(steps=self.steps.pop(request.session_id, 0))

    async def Step(self, request: pb.StepRequest, context: Any) -> pb.StepResponse:
        return await self._answer(request, context)

    async def StepStream(
        self, request_iterator: AsyncIterator[pb.StepRequest], context: Any
    ) -> AsyncIterator[pb.StepResponse]:
        async for request in request_iterator:
            yield await self._answer(request, context)

    async def Generate(
        self, request: pb.GenerateRequest, context: Any
    ) -> AsyncIterator[pb.GenerateResponse]:
        session_id = request.session_id
        state = await self._state(session_id, context)
        if request.WhichOneof("prompt") == "prompt_tokens":
            logits = self._feed(session_id, state, list(request.prompt_tokens.ids))
        else:
            logits = self.graph.head(state)
        max_tokens = request.max_tokens or DEFAULT_MAX_TOKENS
        for produced in range(1, max_tokens + 1):
            token = int(sample_rows(logits, self.rng)[0])
            probability = float(softmax_rows(logits)[0, token])
            logits = self._feed(session_id, self.states[session_id], [token])
            yield pb.GenerateResponse(
                session_id=session_id,
                tokens=[
                    pb.GeneratedToken(
                        id=token, text=self.graph.vocabulary[token], probability=probability
                    )
                ],
                steps=self.steps[session_id],
                finish_reason=finish_reason(produced, max_tokens),
            )


def _arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--package", type=Path, required=True, help="a model package directory")
    parser.add_argument(
        "--threads", type=int, default=0, help="onnxruntime intra-op threads; 0: its default"
    )


def main(argv: Sequence[str] | None = None) -> None:
    serve_main(
        __doc__ or "",
        lambda args: BaselineServicer(StepGraph.load(args.package, args.threads)),
        argv,
        _arguments,
    )


if __name__ == "__main__":
    main()
