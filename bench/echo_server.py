"""The transport ceiling: the ``rnnserve.v1.RnnServe`` service shape with no model.

CreateSession returns a fresh id; Step, StepStream and StepMany answer every step with
the same five entries rnnserve would send by default (StepMany in its columns); Generate
streams a fixed token per message. Whatever rnnserve spends beyond this is its own.

    python -m bench.echo_server [--port 0]
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from bench.comparison_server import (
    DEFAULT_TOP_K,
    finish_reason,
    new_session_id,
    requested_top_k,
    token_ids,
    top_entries,
)
from bench.comparison_server import main as serve_main
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc

FIXED_TOP = ((69, 0.21), (84, 0.17), (65, 0.12), (79, 0.08), (73, 0.05))
FIXED_VOCABULARY = tuple(chr(i) for i in range(128))
GENERATED = pb.GeneratedToken(id=69, text="E", probability=0.21)
DEFAULT_MAX_TOKENS = 64


class EchoServicer(rnnserve_pb2_grpc.RnnServeServicer):
    def __init__(self) -> None:
        self._steps: dict[str, int] = {}

    def _answer(self, request: pb.StepRequest) -> pb.StepResponse:
        consumed = len(token_ids(request))
        steps = self._steps.get(request.session_id, 0) + consumed
        self._steps[request.session_id] = steps
        ranked = FIXED_TOP[: requested_top_k(request)]
        return pb.StepResponse(
            session_id=request.session_id,
            steps=steps,
            consumed=consumed,
            top=top_entries(ranked, FIXED_VOCABULARY),
        )

    async def CreateSession(self, request: pb.CreateSessionRequest, context: Any) -> pb.Session:
        session_id = new_session_id()
        self._steps[session_id] = 0
        return pb.Session(session_id=session_id, idle_timeout_s=600)

    async def CloseSession(
        self, request: pb.CloseSessionRequest, context: Any
    ) -> pb.CloseSessionResponse:
        return pb.CloseSessionResponse(steps=self._steps.pop(request.session_id, 0))

    async def Step(self, request: pb.StepRequest, context: Any) -> pb.StepResponse:
        return self._answer(request)

    async def StepStream(
        self, request_iterator: AsyncIterator[pb.StepRequest], context: Any
    ) -> AsyncIterator[pb.StepResponse]:
        async for request in request_iterator:
            yield self._answer(request)

    async def StepMany(
        self, request_iterator: AsyncIterator[pb.StepManyRequest], context: Any
    ) -> AsyncIterator[pb.StepManyResponse]:
        async for request in request_iterator:
            count = len(request.session_ids)
            lengths = list(request.lengths) or [1] * count
            texts = list(request.texts) or [""] * count
            consumed = [n or len(text) for n, text in zip(lengths, texts, strict=True)]
            steps = []
            for session_id, n in zip(request.session_ids, consumed, strict=True):
                steps.append(self._steps.get(session_id, 0) + n)
                self._steps[session_id] = steps[-1]
            ranked = FIXED_TOP[: request.top_k if request.HasField("top_k") else DEFAULT_TOP_K]
            yield pb.StepManyResponse(
                steps=steps,
                consumed=consumed,
                top_counts=[len(ranked)] * count,
                top_ids=[i for i, _ in ranked] * count,
                top_texts=[FIXED_VOCABULARY[i] for i, _ in ranked] * count,
                top_probabilities=[p for _, p in ranked] * count,
            )

    async def Generate(
        self, request: pb.GenerateRequest, context: Any
    ) -> AsyncIterator[pb.GenerateResponse]:
        max_tokens = request.max_tokens or DEFAULT_MAX_TOKENS
        steps = self._steps.get(request.session_id, 0)
        for produced in range(1, max_tokens + 1):
            yield pb.GenerateResponse(
                session_id=request.session_id,
                tokens=[GENERATED],
                steps=steps + produced,
                finish_reason=finish_reason(produced, max_tokens),
            )
        self._steps[request.session_id] = steps + max_tokens


def main(argv: Sequence[str] | None = None) -> None:
    serve_main(__doc__ or "", lambda _args: EchoServicer(), argv)


if __name__ == "__main__":
    main()
