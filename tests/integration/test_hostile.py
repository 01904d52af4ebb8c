"""Hostile input, through real gRPC calls (raw stubs, so every value can be sent).

Each case expects one status code. A control session steps beside the whole battery in
its own thread, and its outputs must be bit-identical to a run of the same text on a
server that saw no battery at all. The server must still be healthy at the end.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from statebytes import Export, Tensor, format_1
from support import SHARED_STATE_KEYS, ServerThread, copy_package, server_config

from rnnserve import Client
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc

CONTROL_TEXT = "a control session that must not notice anything " * 3
UINT32_MAX = 2**32 - 1
LIMITS = {"max_tokens_per_request": 64, "max_generate_tokens": 64, "max_request_bytes": 65536,
          "max_steps_per_message": 8}  # fmt: skip


@dataclass
class Battery:
    stub: rnnserve_pb2_grpc.RnnServeStub
    channel: grpc.Channel
    model: str
    other_model: str
    vocabulary: int
    session: str  # an open session of `model`
    closed: str  # a session closed before the battery
    state: bytes  # an export of `session`
    other_state: bytes  # an export from `other_model`


def raw(channel: grpc.Channel, method: str, payload: bytes) -> Any:
    call = channel.unary_unary(f"/rnnserve.v1.RnnServe/{method}")
    return call(payload, timeout=10)


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def forged(b: Battery, change: Callable[[Export], Export]) -> Any:
    """Import the battery's export with a field changed and signed again (a leaked key)."""
    return imported(b, change(Export.parse(b.state)).signed(SHARED_STATE_KEYS))


def with_h(export: Export, value: float) -> Export:
    return export.with_values({(0, 3): value})


def as_float64(h: Tensor) -> Tensor:
    return Tensor(h.name, 3, h.shape, h.values.astype("<f8").tobytes())


def old_format(b: Battery, steps: int = 0, header: bytes = b"") -> bytes:
    """The battery's state in format 1 (JSON header, SHA-256 checksum, no MAC)."""
    return format_1(b.model, 1, steps, Export.parse(b.state).tensors[0].values, header)


def imported(b: Battery, state: bytes) -> Any:
    return b.stub.CreateSession(pb.CreateSessionRequest(model=b.model, state=state))


def generate(b: Battery, **fields: Any) -> list[Any]:
    request = pb.GenerateRequest(session_id=b.session, prompt_text="a", **fields)
    return list(b.stub.Generate(request, timeout=10))


def step(b: Battery, **fields: Any) -> Any:
    return b.stub.Step(pb.StepRequest(**{"session_id": b.session, **fields}), timeout=10)


def step_many_mixed(b: Battery) -> None:
    """Text, an unknown session, an out-of-range id: each step answered alone."""
    request = pb.StepManyRequest(
        session_ids=[b.session, "5" * 32, b.session],
        lengths=[0, 0, 1],
        texts=["a", "a", ""],
        tokens=[b.vocabulary],
    )
    (reply,) = list(b.stub.StepMany(iter([request]), timeout=10))
    errors = {e.index: e.code for e in reply.errors}
    assert errors == {1: grpc.StatusCode.NOT_FOUND.value[0], 2: INVALID.value[0]}
    assert list(reply.consumed) == [1, 0, 0]
    assert list(reply.top_counts) == [5, 0, 0]
    assert len(reply.top_ids) == len(reply.top_texts) == len(reply.top_probabilities) == 5


def step_many_long_request_id(b: Battery) -> None:
    """A request id over 64 characters fails its step alone, on the batched path too."""
    request = pb.StepManyRequest(
        session_ids=[b.session, b.session + "x"], tokens=[5, 5], request_ids=["r" * 65, "ok"]
    )
    (reply,) = list(b.stub.StepMany(iter([request]), timeout=10))
    assert {e.index: e.code for e in reply.errors}[0] == INVALID.value[0]
    assert "request_id" in reply.errors[0].message


def step_many(b: Battery, **columns: Any) -> Any:
    request = pb.StepManyRequest(**{"session_ids": [b.session], **columns})
    return list(b.stub.StepMany(iter([request]), timeout=10))


INVALID, NOT_FOUND, EXHAUSTED = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
)
PRECONDITION, OK = grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.OK

CASES: dict[str, tuple[grpc.StatusCode, Callable[[Battery], Any]]] = {
    # --- token ids and inputs
    "token id = vocabulary size": (
        INVALID,
        lambda b: step(b, tokens=pb.TokenIds(ids=[b.vocabulary])),
    ),
    "token id = uint32 max": (INVALID, lambda b: step(b, tokens=pb.TokenIds(ids=[UINT32_MAX]))),
    "one bad id among good ones": (
        INVALID,
        lambda b: step(b, tokens=pb.TokenIds(ids=[4, 5, 10**6])),
    ),
    "empty token list": (INVALID, lambda b: step(b, tokens=pb.TokenIds(ids=[]))),
    "empty text": (INVALID, lambda b: step(b, text="")),
    "no input at all": (INVALID, step),
    "tokens over the request limit": (
        EXHAUSTED,
        lambda b: step(b, tokens=pb.TokenIds(ids=[4] * 65)),
    ),
    "text over the request limit": (EXHAUSTED, lambda b: step(b, text="x" * 65)),
    "text of unknown characters maps to unk": (
        OK,
        lambda b: step(b, text="\u2603\U0001f600\u202e"),
    ),
    "text with NUL and control characters": (OK, lambda b: step(b, text="\x00\x01\x7f")),
    "top_k above 1000": (INVALID, lambda b: step(b, text="a", top_k=1001)),
    "top_k = uint32 max": (INVALID, lambda b: step(b, text="a", top_k=UINT32_MAX)),
    "top_k larger than the vocabulary is capped": (OK, lambda b: step(b, text="a", top_k=1000)),
    # --- sessions
    "unknown session id": (
        NOT_FOUND,
        lambda b: b.stub.Step(pb.StepRequest(session_id="0" * 32, text="a")),
    ),
    "empty session id": (INVALID, lambda b: b.stub.Step(pb.StepRequest(session_id="", text="a"))),
    "session id of 10k characters": (
        NOT_FOUND,
        lambda b: b.stub.Step(pb.StepRequest(session_id="x" * 10_000, text="a")),
    ),
    "closed session": (
        NOT_FOUND,
        lambda b: b.stub.Step(pb.StepRequest(session_id=b.closed, text="a")),
    ),
    "close an unknown session": (
        NOT_FOUND,
        lambda b: b.stub.CloseSession(pb.CloseSessionRequest(session_id="1" * 32)),
    ),
    "fork an unknown session": (
        NOT_FOUND,
        lambda b: b.stub.ForkSession(pb.ForkSessionRequest(session_id="2" * 32)),
    ),
    "export an unknown session": (
        NOT_FOUND,
        lambda b: b.stub.ExportSession(pb.ExportSessionRequest(session_id="3" * 32)),
    ),
    "create on an unknown model": (
        NOT_FOUND,
        lambda b: b.stub.CreateSession(pb.CreateSessionRequest(model="nope")),
    ),
    "create with an empty model name": (
        NOT_FOUND,
        lambda b: b.stub.CreateSession(pb.CreateSessionRequest(model="")),
    ),
    "create on an unknown version": (
        NOT_FOUND,
        lambda b: b.stub.CreateSession(pb.CreateSessionRequest(model=b.model, version=99)),
    ),
    "idle timeout beyond the maximum": (
        INVALID,
        lambda b: b.stub.CreateSession(
            pb.CreateSessionRequest(model=b.model, idle_timeout_s=UINT32_MAX)
        ),
    ),
    "a source for a language model": (
        INVALID,
        lambda b: b.stub.CreateSession(pb.CreateSessionRequest(model=b.model, source_text="x")),
    ),
    "a condition for a language model": (
        INVALID,
        lambda b: b.stub.CreateSession(pb.CreateSessionRequest(model=b.model, condition="fr")),
    ),
    # --- imported state
    "state with one byte flipped": (
        INVALID,
        lambda b: b.stub.CreateSession(
            pb.CreateSessionRequest(model=b.model, state=flip(b.state, len(b.state) // 2))
        ),
    ),
    "state truncated": (
        INVALID,
        lambda b: b.stub.CreateSession(pb.CreateSessionRequest(model=b.model, state=b.state[:-40])),
    ),
    "state of random bytes": (
        INVALID,
        lambda b: b.stub.CreateSession(
            pb.CreateSessionRequest(model=b.model, state=bytes(range(256)) * 4)
        ),
    ),
    "state with a bad magic": (
        INVALID,
        lambda b: b.stub.CreateSession(
            pb.CreateSessionRequest(model=b.model, state=b"X" + b.state[1:])
        ),
    ),
    "state of another model": (
        INVALID,
        lambda b: b.stub.CreateSession(pb.CreateSessionRequest(model=b.model, state=b.other_state)),
    ),
    "state: steps = 2^64 - 1, signed": (
        INVALID,
        lambda b: forged(b, lambda e: e.replace(steps=2**64 - 1)),
    ),
    "state: an RNG of another bit generator, signed": (
        INVALID,
        lambda b: forged(b, lambda e: e.replace(rng_kind=2)),
    ),
    "state: an even PCG64 increment, signed": (
        INVALID,
        lambda b: forged(b, lambda e: e.replace(rng_increment=e.rng_increment - 1)),
    ),
    "state: h = 3e38, signed": (INVALID, lambda b: forged(b, lambda e: with_h(e, 3e38))),
    "state: h = NaN, signed": (INVALID, lambda b: forged(b, lambda e: with_h(e, math.nan))),
    "state: float64 values, signed": (
        INVALID,
        lambda b: forged(b, lambda e: e.replace(tensors=[as_float64(e.tensors[0])])),
    ),
    "state: a format-1 header nested 20,000 deep": (
        INVALID,
        lambda b: imported(b, old_format(b, header=b'{"format":' + b"[" * 20_000)),
    ),
    "state: format 1 with a valid checksum and no MAC": (
        INVALID,
        lambda b: imported(b, old_format(b, steps=2**64)),
    ),
    "state: a session record's kind, signed": (
        INVALID,
        lambda b: forged(b, lambda e: e.replace(kind=2)),
    ),
    "state plus a source": (
        INVALID,
        lambda b: b.stub.CreateSession(
            pb.CreateSessionRequest(model=b.model, state=b.state, source_text="x")
        ),
    ),
    # --- sampling parameters
    "negative temperature": (INVALID, lambda b: generate(b, temperature=-1.0)),
    "NaN temperature": (INVALID, lambda b: generate(b, temperature=math.nan)),
    "infinite temperature": (INVALID, lambda b: generate(b, temperature=math.inf)),
    "temperature above 100": (INVALID, lambda b: generate(b, temperature=101.0)),
    "top_p = 0": (INVALID, lambda b: generate(b, top_p=0.0)),
    "negative top_p": (INVALID, lambda b: generate(b, top_p=-0.5)),
    "top_p above 1": (INVALID, lambda b: generate(b, top_p=1.5)),
    "NaN top_p": (INVALID, lambda b: generate(b, top_p=math.nan)),
    "generation top_k above the vocabulary": (
        INVALID,
        lambda b: generate(b, top_k=b.vocabulary + 1),
    ),
    "max_tokens above the limit": (EXHAUSTED, lambda b: generate(b, max_tokens=65)),
    "max_tokens = uint32 max": (EXHAUSTED, lambda b: generate(b, max_tokens=UINT32_MAX)),
    "an empty stop string": (INVALID, lambda b: generate(b, stop=[""])),
    "17 stop strings": (INVALID, lambda b: generate(b, stop=[str(i) for i in range(17)])),
    "a stop string of 257 characters": (INVALID, lambda b: generate(b, stop=["s" * 257])),
    "a stop token outside the vocabulary": (
        INVALID,
        lambda b: generate(b, stop_token_ids=[b.vocabulary]),
    ),
    "a prompt token outside the vocabulary": (
        INVALID,
        lambda b: list(
            b.stub.Generate(
                pb.GenerateRequest(
                    session_id=b.session, prompt_tokens=pb.TokenIds(ids=[UINT32_MAX])
                )
            )
        ),
    ),
    "generate on an unknown session": (
        NOT_FOUND,
        lambda b: list(b.stub.Generate(pb.GenerateRequest(session_id="4" * 32))),
    ),
    "a valid generation": (OK, lambda b: generate(b, max_tokens=3, temperature=0.0)),
    # --- calls that do not fit the model
    "classify with a language model": (
        PRECONDITION,
        lambda b: b.stub.Classify(pb.ClassifyRequest(model=b.model, text="a")),
    ),
    "translate with a language model": (
        PRECONDITION,
        lambda b: b.stub.Translate(pb.TranslateRequest(model=b.model, source_text="a")),
    ),
    "translate without a source": (
        INVALID,
        lambda b: b.stub.Translate(pb.TranslateRequest(model=b.model)),
    ),
    "get an unknown model": (NOT_FOUND, lambda b: b.stub.GetModel(pb.GetModelRequest(name="nope"))),
    # --- multiplexed steps
    "too many steps in one message": (
        INVALID,
        lambda b: step_many(b, session_ids=[b.session] * 9, tokens=[5] * 9),
    ),
    "StepMany: fewer tokens than the steps take": (INVALID, lambda b: step_many(b, tokens=[])),
    "StepMany: more tokens than the steps take": (INVALID, lambda b: step_many(b, tokens=[5, 6])),
    "StepMany: lengths not one per step": (
        INVALID,
        lambda b: step_many(b, tokens=[5, 6], lengths=[1, 1]),
    ),
    "StepMany: texts not one per step": (
        INVALID,
        lambda b: step_many(b, lengths=[0], texts=["a", "b"]),
    ),
    "StepMany: request ids not one per step": (
        INVALID,
        lambda b: step_many(b, tokens=[5], request_ids=["x", "y"]),
    ),
    "a bad step among good ones fails alone": (OK, step_many_mixed),
    "StepMany: a request id of 65 characters fails its step": (OK, step_many_long_request_id),
    # --- bytes on the wire
    "garbage bytes as a Step": (INVALID, lambda b: raw(b.channel, "Step", b"\xff\xff\xff\xff")),
    "garbage bytes as a CreateSession": (
        INVALID,
        lambda b: raw(b.channel, "CreateSession", b"\x0a\x05ab"),
    ),
    "a truncated StepRequest": (
        INVALID,
        lambda b: raw(
            b.channel,
            "Step",
            pb.StepRequest(session_id=b.session, text="abc").SerializeToString()[:-2],
        ),
    ),
    "a wrong wire type for a field": (
        INVALID,
        lambda b: raw(b.channel, "Step", b"\x0d\x00\x00\x00\x00"),
    ),
    "unknown fields are ignored": (
        OK,
        lambda b: raw(
            b.channel,
            "Step",
            pb.StepRequest(session_id=b.session, text="q").SerializeToString() + b"\xf8\x07\x01",
        ),
    ),
    "a message over the size limit": (
        EXHAUSTED,
        lambda b: raw(b.channel, "Step", b"\x0a" + b"\x80" * 70_000),
    ),
    "an unknown method": (grpc.StatusCode.UNIMPLEMENTED, lambda b: raw(b.channel, "Explode", b"")),
}


def control_run(address: str, model: str, stop: threading.Event | None) -> list[list[float]]:
    """Step CONTROL_TEXT char by char; with `stop`, keep going until the battery ends."""
    with Client(address, timeout=30) as client, client.create_session(model) as session:
        rows = [
            session.step(text=c, return_distribution=True).distribution or [] for c in CONTROL_TEXT
        ]
        while stop is not None and not stop.is_set():  # keep the batcher busy beside the battery
            with client.create_session(model) as extra:
                extra.step(text="busy")
        return rows


@pytest.fixture(scope="module")
def battery(
    tiny_package: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerThread, Battery]]:
    repo = tmp_path_factory.mktemp("hostile")
    name = tiny_package.parent.name
    copy_package(tiny_package, repo, name)
    copy_package(tiny_package, repo, "other-model")
    with ServerThread(server_config(repo, state_keys=SHARED_STATE_KEYS, **LIMITS)) as server:
        channel = grpc.insecure_channel(server.address)
        stub = rnnserve_pb2_grpc.RnnServeStub(channel)
        model = stub.GetModel(pb.GetModelRequest(name=name))
        session = stub.CreateSession(pb.CreateSessionRequest(model=name)).session_id
        closed = stub.CreateSession(pb.CreateSessionRequest(model=name)).session_id
        stub.CloseSession(pb.CloseSessionRequest(session_id=closed))
        other = stub.CreateSession(pb.CreateSessionRequest(model="other-model")).session_id
        yield (
            server,
            Battery(
                stub=stub,
                channel=channel,
                model=name,
                other_model="other-model",
                vocabulary=model.vocabulary.size,
                session=session,
                closed=closed,
                state=stub.ExportSession(pb.ExportSessionRequest(session_id=session)).state,
                other_state=stub.ExportSession(pb.ExportSessionRequest(session_id=other)).state,
            ),
        )
        channel.close()


def test_the_battery_has_at_least_fifty_cases() -> None:
    assert len(CASES) >= 50


def test_every_hostile_input_gets_its_status_and_hurts_nobody(
    battery: tuple[ServerThread, Battery], tiny_package: Path, tmp_path: Path
) -> None:
    server, b = battery
    # The reference: the control text on a separate server that sees nothing else.
    copy_package(tiny_package, tmp_path, b.model)
    with ServerThread(server_config(tmp_path)) as quiet:
        expected = control_run(quiet.address, b.model, None)

    stop = threading.Event()
    results: dict[str, list[list[float]]] = {}
    control = threading.Thread(
        target=lambda: results.setdefault("rows", control_run(server.address, b.model, stop))
    )
    control.start()
    failures = []
    try:
        for name, (code, call) in CASES.items():
            try:
                call(b)
                got = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                got = exc.code()
            if got != code:
                failures.append(f"{name}: expected {code.name}, got {got.name}")
    finally:
        stop.set()
        control.join(60)
    assert not failures, "\n".join(failures)
    assert results["rows"] == expected  # bit-identical beside the battery
    assert Client(server.address).health() == "SERVING"
    assert b.stub.Step(pb.StepRequest(session_id=b.session, text="z")).steps > 0


def test_concurrent_calls_on_one_session_apply_in_order(
    battery: tuple[ServerThread, Battery],
) -> None:
    _, b = battery
    session = b.stub.CreateSession(pb.CreateSessionRequest(model=b.model)).session_id
    futures = [b.stub.Step.future(pb.StepRequest(session_id=session, text="ab")) for _ in range(40)]
    counts = sorted(f.result(timeout=30).steps for f in futures)
    assert counts == list(range(2, 82, 2))  # every call applied exactly once, none interleaved


def test_close_during_a_stream_and_cancel_during_generation(
    battery: tuple[ServerThread, Battery],
) -> None:
    _, b = battery
    session = b.stub.CreateSession(pb.CreateSessionRequest(model=b.model)).session_id
    closed = threading.Event()

    def requests() -> Iterator[pb.StepRequest]:
        yield pb.StepRequest(session_id=session, text="a")
        closed.wait(10)
        yield pb.StepRequest(session_id=session, text="b")

    stream = b.stub.StepStream(requests(), timeout=30)
    first = next(stream)
    assert first.steps == 1
    b.stub.CloseSession(pb.CloseSessionRequest(session_id=session))
    closed.set()
    with pytest.raises(grpc.RpcError) as ended:
        next(stream)
    assert ended.value.code() == NOT_FOUND

    for seed in range(20):  # a seed whose generation outlasts 3 tokens (no early end)
        session = b.stub.CreateSession(pb.CreateSessionRequest(model=b.model)).session_id
        generation = b.stub.Generate(
            pb.GenerateRequest(session_id=session, prompt_text="a", max_tokens=64, seed=seed)
        )
        delivered = list(itertools.islice(generation, 3))
        if len(delivered) == 3 and not delivered[-1].finish_reason:
            break
    generation.cancel()
    after = b.stub.Step(pb.StepRequest(session_id=session, text="x"), timeout=10)
    assert after.steps >= delivered[-1].steps + 1  # the session is free and consistent


def test_status_details_never_echo_unbounded_input(battery: tuple[ServerThread, Battery]) -> None:
    """Details travel as a trailer that gRPC caps (8-16 KiB): a 10k-character id must come
    back as a short NOT_FOUND, never as the client's RESOURCE_EXHAUSTED about metadata."""
    _, b = battery
    for call in (
        lambda: b.stub.Step(pb.StepRequest(session_id="y" * 10_000, text="a")),
        lambda: b.stub.CreateSession(pb.CreateSessionRequest(model="m" * 10_000)),
        lambda: b.stub.CreateSession(pb.CreateSessionRequest(model=b.model, condition="c" * 9_000)),
    ):
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() in (NOT_FOUND, INVALID)
        assert len(raised.value.details() or "") < 300
