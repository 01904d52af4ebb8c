"""A model of float-vector inputs and a regression output (an LSTM: state h and c) as a
served model like any other, through the Python client: its inputs checked field by
field, a retried Step answered from the output the first try kept (it has no head
graph), fork, export and import (two tensors, h and c, each checked against its
bound), and the shared store (a real redis-server) across two replicas."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import redis
import torch
from own_models import trained_modules
from statebytes import Export
from support import (
    SHARED_STATE_KEYS,
    RedisServer,
    ServerThread,
    copy_package,
    edit_manifest,
    server_config,
)

from rnnserve import Client, DataLoss, InvalidArgument, StepInput
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc
from rnnserve_train import package_torch

pytestmark = pytest.mark.slow
NAME, SIZE = "vector-lstm", 4
HEADLESS = "vector-lstm-headless"
BOUND = 50.0  # the servers' max_unbounded_state: the bound of c, which has none of its own


@pytest.fixture(scope="module")
def module() -> torch.nn.Module:
    return trained_modules(NAME)[NAME]


@pytest.fixture(scope="module")
def models(
    module: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory, tiny_package: Path
) -> Path:
    root = tmp_path_factory.mktemp("vector-models")
    package = package_torch(module, root, name=NAME, input_size=SIZE)
    # The same model without its head graph (optional for a regression output): it has no
    # output before its first input, so a retry cannot compute its answer from the state.
    edit_manifest(copy_package(package, root, HEADLESS), lambda m: m["graphs"].pop("head"))
    shutil.copytree(tiny_package, root / tiny_package.parent.name / tiny_package.name)
    return root


@pytest.fixture(scope="module")
def server(models: Path) -> Iterator[ServerThread]:
    config = server_config(models, state_keys=SHARED_STATE_KEYS, max_unbounded_state=BOUND)
    with ServerThread(config) as running:
        yield running


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[Client]:
    with Client(server.address, timeout=60) as connected:
        yield connected


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> Iterator[rnnserve_pb2_grpc.RnnServeStub]:
    """The raw stub: requests the client library would refuse to send."""
    with grpc.insecure_channel(server.address) as channel:
        yield rnnserve_pb2_grpc.RnnServeStub(channel)


def step_message(session_id: str, vector: np.ndarray, request_id: str = "") -> pb.StepRequest:
    return pb.StepRequest(
        session_id=session_id,
        vectors=pb.FloatVectors(steps=len(vector.reshape(-1, SIZE)), values=vector.ravel()),
        request_id=request_id,
    )


def vectors(steps: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(steps, SIZE)).astype(np.float32)


def expected(module: torch.nn.Module, inputs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(inputs)[None])[0].numpy()  # type: ignore[no-any-return]


def test_inputs_are_checked_naming_the_field(client: Client, stub: Any, model_name: str) -> None:
    session = client.create_session(NAME)

    def refusal(request: pb.StepRequest) -> str:
        with pytest.raises(grpc.RpcError) as refused:
            stub.Step(request)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return str(refused.value.details())

    bad = vectors(3)
    bad[1, 2] = np.nan
    assert "input.vectors.values[6] = nan (step 1, index 2) is not finite" in refusal(
        step_message(session.id, bad)
    )
    bad[1, 2] = np.inf
    assert "values[6] = inf (step 1, index 2)" in refusal(step_message(session.id, bad))
    short = pb.StepRequest(session_id=session.id, vectors=pb.FloatVectors(steps=2, values=[1.0]))
    assert "input.vectors.values holds 1 floats; expected steps x input size = 2 x 4 = 8" in (
        refusal(short)
    )
    empty = pb.StepRequest(session_id=session.id, vectors=pb.FloatVectors(steps=0))
    assert "input.vectors is empty" in refusal(empty)
    assert "reads vectors of 4 floats" in refusal(
        pb.StepRequest(session_id=session.id, tokens=pb.TokenIds(ids=[1]))
    )
    assert "reads vectors of 4 floats" in refusal(pb.StepRequest(session_id=session.id, text="a"))
    with pytest.raises(ValueError, match=r"vectors\[1\]\[2\] = nan: not finite"):
        session.step(vectors=[*vectors(1).tolist(), [0.0, 0.0, float("nan"), 0.0]])
    words = client.create_session(model_name)
    with words, pytest.raises(InvalidArgument, match="reads token ids or text, not float"):
        words.step(vectors=[[1.0]])
    steps = [StepInput(session.id, vectors=[[0.0] * 3]), StepInput(session.id, [1])]
    many = next(client.step_many([steps]))
    assert all(isinstance(outcome, InvalidArgument) for outcome in many), many
    assert client.close_session(session.id) == 0  # nothing was applied


def test_vectors_are_bounded_and_paid_for_as_tokens_are(models: Path) -> None:
    """A request's vectors count as its steps: at most max_tokens_per_request of them
    (counted before the values are read), StepMany's in all at most
    max_tokens_per_message (each session's by its model's input size), and each is
    taken from the caller's token budget."""
    config = server_config(
        models,
        state_keys=SHARED_STATE_KEYS,
        max_unbounded_state=BOUND,
        max_tokens_per_request=8,
        max_tokens_per_message=12,
        max_generate_tokens=4,
        caller_token_burst=16,
        caller_tokens_per_s=0.01,  # no refill to speak of during the test
    )
    with ServerThread(config) as server, grpc.insecure_channel(server.address) as channel:
        stub = rnnserve_pb2_grpc.RnnServeStub(channel)
        ids = [stub.CreateSession(pb.CreateSessionRequest(model=NAME)).session_id for _ in range(4)]
        with pytest.raises(grpc.RpcError) as refused:
            stub.Step(step_message(ids[0], vectors(9)))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert refused.value.details() == (
            "input.vectors steps = 9 exceeds the server's limit of 8 (max_tokens_per_request)"
        )
        assert dict(refused.value.trailing_metadata())["grpc-retry-pushback-ms"] == "-1"

        def step_many(sessions: list[str], steps: int) -> Any:
            request = pb.StepManyRequest(
                session_ids=sessions,
                vectors=vectors(steps * len(sessions)).ravel(),
                value_counts=[steps * SIZE] * len(sessions),
            )
            (reply,) = stub.StepMany(iter([request]), timeout=30)
            return reply

        with pytest.raises(grpc.RpcError) as refused:
            step_many(ids, 4)  # 16 vectors
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "16 vectors beside 0 tokens" in refused.value.details()
        assert "at most 12 inputs in all per message (max_tokens_per_message)" in (
            refused.value.details()
        )
        reply = step_many(ids[:3], 4)  # 12 vectors: the message's limit, 12 of 16 tokens
        assert list(reply.steps) == [4, 4, 4] and not reply.errors
        assert stub.Step(step_message(ids[3], vectors(4))).steps == 4  # the bucket's last 4
        with pytest.raises(grpc.RpcError) as refused:
            stub.Step(step_message(ids[3], vectors(4)))
        assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "caller_tokens_per_s" in refused.value.details()
        for session_id in ids:  # the refusals applied nothing
            assert stub.CloseSession(pb.CloseSessionRequest(session_id=session_id)).steps == 4


def test_a_retried_step_is_answered_from_the_kept_output(
    client: Client, stub: Any, module: torch.nn.Module
) -> None:
    """A model without a head graph has no output to compute from the state, so the call
    keeps the output a retry of it needs."""
    inputs = vectors(2)
    want = expected(module, inputs)
    with client.create_session(HEADLESS) as session:
        assert not session.model.output_before_input
        first = client.step(session.id, vectors=inputs[:1].tolist())
        message = step_message(session.id, inputs[1], "retry-1")
        answers = [stub.Step(message), stub.Step(message)]  # the same request id twice
        assert [a.steps for a in answers] == [2, 2]
        for answer in answers:
            np.testing.assert_allclose(answer.values, want[1], atol=2e-5)
        np.testing.assert_allclose(first.values or [], want[0], atol=2e-5)


def test_fork_export_and_import_continue_exactly(client: Client, module: torch.nn.Module) -> None:
    inputs = vectors(100)
    want = expected(module, inputs)
    with client.create_session(NAME) as session:
        session.step(vectors=inputs[:50].tolist())
        state = session.export()
        fork = session.fork()
    parsed = Export.parse(state)
    assert [(t.name, t.shape) for t in parsed.tensors] == [(b"h", [1, 16]), (b"c", [1, 16])]
    imported = client.create_session(NAME, state=state)
    for copy in (fork, imported):
        with copy:
            for t in range(50, 100):
                values = copy.step(vectors=inputs[t : t + 1].tolist()).values
                np.testing.assert_allclose(values or [], want[t], atol=2e-5)


def test_each_state_tensor_is_checked_against_its_bound(client: Client) -> None:
    with client.create_session(NAME) as session:
        session.step(vectors=vectors(5).tolist())
        parsed = Export.parse(session.export())
    h, c = parsed.tensors

    def forged(tensor: int, value: float) -> bytes:
        changed = [h, c]
        values = changed[tensor].values
        values[0, 3] = value
        changed[tensor] = changed[tensor].with_values(values)
        return parsed.replace(tensors=changed).signed(SHARED_STATE_KEYS)

    within = client.create_session(NAME, state=forged(1, BOUND - 1))
    within.close()
    with pytest.raises(InvalidArgument) as refused:
        client.create_session(NAME, state=forged(1, BOUND + 1))
    assert "state.c[0, 3] = 51.0 is out of range; allowed: |c| <= 50" in refused.value.details
    assert "the setting max_unbounded_state" in refused.value.details
    with pytest.raises(InvalidArgument, match=r"state.h\[0, 3\] = 1.5 is out of range.*\[-1, 1\]"):
        client.create_session(NAME, state=forged(0, 1.5))
    with pytest.raises(InvalidArgument, match=r"model's state is 2 tensor\(s\) \(h, c\)"):
        client.create_session(NAME, state=parsed.replace(tensors=[h]).signed(SHARED_STATE_KEYS))


@pytest.fixture(scope="module")
def replicas(models: Path, redis_server: RedisServer) -> Iterator[list[Client]]:
    config = server_config(
        models,
        session_store=redis_server.url,
        state_keys=SHARED_STATE_KEYS,
        max_unbounded_state=BOUND,
    )
    with (
        ServerThread(config) as a,
        ServerThread(config) as b,
        Client(a.address, timeout=30, retries=0) as one,
        Client(b.address, timeout=30, retries=0) as two,
    ):
        yield [one, two]


def test_replicas_sharing_a_store_continue_each_others_sessions(
    replicas: list[Client], module: torch.nn.Module, redis_server: RedisServer
) -> None:
    inputs = vectors(40)
    want = expected(module, inputs)
    one, two = replicas
    session = one.create_session(HEADLESS)
    for t in range(40):  # each step on the other replica
        values = replicas[t % 2].step(session.id, vectors=inputs[t : t + 1].tolist()).values
        np.testing.assert_allclose(values or [], want[t], atol=2e-5, err_msg=f"step {t}")
    retried = step_message(session.id, inputs[0], "across")
    stubs = [rnnserve_pb2_grpc.RnnServeStub(grpc.insecure_channel(c.address)) for c in replicas]
    first, again = stubs[0].Step(retried), stubs[1].Step(retried)  # the retry elsewhere
    assert first.steps == again.steps == 41 and list(first.values) == list(again.values)
    many = list(two.step_many([[StepInput(session.id, vectors=inputs[:2].tolist())]]))
    assert many[0][0].steps == 43  # type: ignore[union-attr]
    with redis.Redis.from_url(redis_server.url) as store:
        key = f"rnnserve:session:{session.id}"
        record = Export.parse(store.hget(key, "session"))  # type: ignore[arg-type]
        assert [t.name for t in record.tensors] == [b"h", b"c"]
        h, c = record.tensors
        values = c.values
        values[0, 0] = 2 * BOUND
        forged = record.replace(tensors=[h, c.with_values(values)]).signed(SHARED_STATE_KEYS)
        store.hset(key, "session", forged)
        store.hincrby(key, "rev", 1)
    with pytest.raises(DataLoss, match=r"state.c\[0, 0\] = 100.0 is out of range"):
        one.step(session.id, vectors=inputs[:1].tolist())
