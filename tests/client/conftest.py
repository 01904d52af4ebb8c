"""The client tests' fixture: a scripted rnnserve server.

It speaks the real rnnserve.v1 protocol over a real gRPC server on port 0, with a toy model
whose answers are known in advance: after character c the next character is the one after c in
`ALPHABET` with probability 1/2, the one after that 1/4, and so on. It also records what the
client did (metadata, cancellations, streams opened), which the real server cannot show.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc

ALPHABET = "abcdefghijklmnopqrstuvwxyz \n"
EOS = len(ALPHABET)
ABORT_METHOD = "/test.Abort/Unary"

CHAR_MODEL = pb.ModelInfo(
    name="toy-char",
    version=1,
    shape=pb.TASK_SHAPE_MANY_TO_MANY,
    cell="gru",
    layers=1,
    hidden_size=8,
    vocabulary=pb.Vocabulary(kind="char", size=EOS + 1, special_tokens={"eos": EOS}),
    output=pb.OUTPUT_KIND_VOCABULARY,
    description="a toy that predicts the next letter of the alphabet",
    state_bytes=32,
    metrics={"test_bits_per_char": 1.5},
)
LABEL_MODEL = pb.ModelInfo(
    name="toy-labels",
    version=2,
    shape=pb.TASK_SHAPE_MANY_TO_ONE,
    cell="rnn-tanh",
    layers=2,
    hidden_size=4,
    vocabulary=pb.Vocabulary(kind="word", size=100),
    output=pb.OUTPUT_KIND_LABELS,
    labels=["negative", "positive"],
    state_bytes=32,
)


def next_distribution(last: int) -> list[float]:
    """The toy model's distribution after token `last` (-1: nothing seen yet)."""
    probabilities = [0.0] * (EOS + 1)
    for rank in range(len(ALPHABET) - 1):
        probabilities[(last + 1 + rank) % len(ALPHABET)] = 0.5 ** (rank + 1)
    probabilities[EOS] = 1.0 - sum(probabilities)
    return probabilities


@dataclass
class Recorded:
    """What the client did to the server."""

    metadata: list[dict[str, str]] = field(default_factory=list)
    step_streams: int = 0
    stream_requests: int = 0
    generate_cancelled: threading.Event = field(default_factory=threading.Event)
    generate_started: threading.Event = field(default_factory=threading.Event)


class ToyServicer(rnnserve_pb2_grpc.RnnServeServicer):
    """rnnserve.v1 over the toy model; sessions are lists of consumed token ids."""

    def __init__(self) -> None:
        self.sessions: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        self.recorded = Recorded()
        self.token_delay_s = 0.0

    # ------------------------------------------------------------ helpers

    def _enter(self, context: grpc.ServicerContext) -> None:
        self.recorded.metadata.append(dict(context.invocation_metadata()))

    def _session(self, session_id: str, context: grpc.ServicerContext) -> list[int]:
        with self.lock:
            tokens = self.sessions.get(session_id)
        if tokens is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"session {session_id!r} does not exist")
        return tokens

    @staticmethod
    def _input(
        request: pb.StepRequest | pb.GenerateRequest, context: grpc.ServicerContext
    ) -> list[int]:
        kind = request.WhichOneof("input" if isinstance(request, pb.StepRequest) else "prompt")
        if kind in ("tokens", "prompt_tokens"):
            ids = list(getattr(request, kind).ids)
            bad = [i for i in ids if i > EOS]
            if bad:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"token id {bad[0]} out of range")
        elif kind in ("text", "prompt_text"):
            text = getattr(request, kind)
            unknown = [c for c in text if c not in ALPHABET]
            if unknown:
                context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"text: character {unknown[0]!r} is not in the vocabulary",
                )
            ids = [ALPHABET.index(c) for c in text]
        else:
            ids = []
        if not ids and isinstance(request, pb.StepRequest):
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "input is empty")
        return ids

    def _step(self, request: pb.StepRequest, context: grpc.ServicerContext) -> pb.StepResponse:
        tokens = self._session(request.session_id, context)
        ids = self._input(request, context)
        top_k = request.top_k if request.HasField("top_k") else 5
        if top_k > 1000:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"top_k = {top_k}, allowed 0 .. 1000")
        tokens.extend(ids)
        probabilities = next_distribution(tokens[-1])
        ranked = sorted(range(len(probabilities)), key=lambda i: -probabilities[i])[:top_k]
        return pb.StepResponse(
            session_id=request.session_id,
            steps=len(tokens),
            consumed=len(ids),
            top=[
                pb.TokenProbability(id=i, text=_text(i), probability=probabilities[i])
                for i in ranked
            ],
            distribution=probabilities if request.return_distribution else [],
        )

    # ------------------------------------------------------------ rpcs

    def ListModels(self, request, context):  # type: ignore[no-untyped-def]
        self._enter(context)
        return pb.ListModelsResponse(models=[CHAR_MODEL, LABEL_MODEL])

    def GetModel(self, request, context):  # type: ignore[no-untyped-def]
        self._enter(context)
        for model in (CHAR_MODEL, LABEL_MODEL):
            if model.name == request.name and request.version in (0, model.version):
                return model
        context.abort(grpc.StatusCode.NOT_FOUND, f"model {request.name!r} is not loaded")

    def CreateSession(self, request, context):  # type: ignore[no-untyped-def]
        model = self.GetModel(pb.GetModelRequest(name=request.model), context)
        session_id = uuid.uuid4().hex
        with self.lock:
            self.sessions[session_id] = []
        return pb.Session(
            session_id=session_id, model=model, idle_timeout_s=request.idle_timeout_s or 300
        )

    def CloseSession(self, request, context):  # type: ignore[no-untyped-def]
        self._enter(context)
        tokens = self._session(request.session_id, context)
        with self.lock:
            del self.sessions[request.session_id]
        return pb.CloseSessionResponse(steps=len(tokens))

    def Step(self, request, context):  # type: ignore[no-untyped-def]
        self._enter(context)
        return self._step(request, context)

    def StepStream(self, request_iterator, context):  # type: ignore[no-untyped-def]
        self._enter(context)
        self.recorded.step_streams += 1
        for request in request_iterator:
            self.recorded.stream_requests += 1
            yield self._step(request, context)

    def Generate(self, request, context):  # type: ignore[no-untyped-def]
        self._enter(context)
        tokens = self._session(request.session_id, context)
        tokens.extend(self._input(request, context))
        finished = threading.Event()
        context.add_callback(
            lambda: None if finished.is_set() else self.recorded.generate_cancelled.set()
        )
        self.recorded.generate_started.set()
        max_tokens = request.max_tokens or 64
        text = ""
        for produced in range(1, max_tokens + 1):
            time.sleep(self.token_delay_s)
            token = (tokens[-1] + 1) % len(ALPHABET) if tokens else 0
            tokens.append(token)
            text += _text(token)
            matched = next((stop for stop in request.stop if text.endswith(stop)), "")
            reason = pb.FINISH_REASON_UNSPECIFIED
            if matched:
                reason = pb.FINISH_REASON_STOP_STRING
            elif produced == max_tokens:
                reason = pb.FINISH_REASON_LENGTH
            if reason != pb.FINISH_REASON_UNSPECIFIED:
                finished.set()
            yield pb.GenerateResponse(
                session_id=request.session_id,
                tokens=[
                    pb.GeneratedToken(
                        id=token, text=_text(token), piece=_text(token), probability=0.5
                    )
                ],
                steps=len(tokens),
                finish_reason=reason,
                matched_stop=matched,
            )
            if finished.is_set():
                return


def _text(token: int) -> str:
    return "<eos>" if token == EOS else ALPHABET[token]


def _abort_with(request: bytes, context: grpc.ServicerContext) -> bytes:
    """Fails with the status code named by the request, so every code can be produced."""
    code = grpc.StatusCode[request.decode()]
    context.abort(code, f"details of {code.name}")


@dataclass
class ToyServer:
    """The running toy server: its address and its servicer (for what it recorded)."""

    address: str
    servicer: ToyServicer
    health: health.HealthServicer
    alphabet: str = ALPHABET
    abort_method: str = ABORT_METHOD


@pytest.fixture
def toy() -> Iterator[ToyServer]:
    """A fresh toy server on 127.0.0.1:<free port>, with health and an abort method."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    servicer = ToyServicer()
    rnnserve_pb2_grpc.add_RnnServeServicer_to_server(servicer, server)
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("rnnserve.v1.RnnServe", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("draining", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                "test.Abort", {"Unary": grpc.unary_unary_rpc_method_handler(_abort_with)}
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield ToyServer(f"127.0.0.1:{port}", servicer, health_servicer)
    finally:
        server.stop(0).wait()
