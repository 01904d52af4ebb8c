"""Work bounded before it is done, and per-caller budgets, on a real server.

Sizes (text code points, tokens per request, tokens and top entries per StepMany
message, request bytes) are refused before the work they would cost; one caller's calls
in flight and tokens per second are its own, so another caller never notices them; a
refusal names its setting and, where a delay helps, says when to retry.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from support import ServerThread, copy_package, edit_manifest, hold_streams, server_config

from rnnserve import Client, InvalidArgument, ResourceExhausted, StepInput
from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc

ALICE, BOB = "alice-token-0001", "bob-token-00002"
PUSHBACK = "grpc-retry-pushback-ms"


def pushback(error: grpc.RpcError) -> str | None:
    return dict(error.trailing_metadata() or ()).get(PUSHBACK)  # type: ignore[attr-defined]


def refused(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value


# ---------------------------------------------------------------- sizes


@pytest.fixture(scope="module")
def sized(
    tiny_package: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerThread, str, str]]:
    """A server with small size limits, serving the tiny model and a copy of it without
    an unknown token (text it cannot represent is INVALID_ARGUMENT once tokenized)."""
    repo = tmp_path_factory.mktemp("sized")
    name = tiny_package.parent.name
    copy_package(tiny_package, repo, name)
    strict = copy_package(tiny_package, repo, "no-unknown")
    edit_manifest(strict, lambda m: m["tokenizer"]["special_tokens"].pop("unk"))
    config = server_config(
        repo,
        max_tokens_per_request=16,
        max_text_chars=32,
        max_tokens_per_message=40,
        max_steps_per_message=64,
        max_request_bytes=4096,
        caller_token_burst=40,
        max_generate_tokens=24,
    )
    with ServerThread(config) as server:
        yield server, name, "no-unknown"


def test_text_is_measured_before_it_is_tokenized(sized: tuple[ServerThread, str, str]) -> None:
    server, _, strict = sized
    with grpc.insecure_channel(server.address) as channel:
        stub = rnnserve_pb2_grpc.RnnServeStub(channel)
        session = stub.CreateSession(pb.CreateSessionRequest(model=strict)).session_id
        unknown = "\u2603"  # not in the vocabulary, and this model has no unknown token
        error = refused(lambda: stub.Step(pb.StepRequest(session_id=session, text=unknown)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT  # tokenized: unrepresentable
        for text in (unknown * 33, "x" * 33):  # over the limit: refused before tokenizing
            error = refused(lambda t=text: stub.Step(pb.StepRequest(session_id=session, text=t)))
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert error.details() == (
                "input.text code points = 33 exceeds the server's limit of 32 (max_text_chars)"
            )
            assert pushback(error) == "-1"  # the same request can never succeed
        error = refused(lambda: stub.Step(pb.StepRequest(session_id=session, text="x" * 17)))
        assert "input tokens = 17 exceeds the server's limit of 16" in error.details()
        assert stub.Step(pb.StepRequest(session_id=session, text="x" * 16)).steps == 16


def test_every_text_input_has_the_limit(sized: tuple[ServerThread, str, str]) -> None:
    server, name, _ = sized
    with Client(server.address) as client, client.create_session(name) as session:
        with pytest.raises(
            ResourceExhausted, match=r"prompt.text code points = 40 .*max_text_chars"
        ):
            list(session.generate("y" * 40, max_tokens=1))
        with pytest.raises(ResourceExhausted) as raised:
            session.step(text="y" * 33)
        assert raised.value.retry_after_s == math.inf  # the client reads the pushback
        assert session.step(text="y").steps == 1  # nothing of the refusals was applied


def test_a_step_many_message_has_a_token_budget(sized: tuple[ServerThread, str, str]) -> None:
    server, name, _ = sized
    with grpc.insecure_channel(server.address) as channel:
        stub = rnnserve_pb2_grpc.RnnServeStub(channel)
        ids = [stub.CreateSession(pb.CreateSessionRequest(model=name)).session_id for _ in range(4)]

        def send(**columns: Any) -> Any:
            request = pb.StepManyRequest(**{"session_ids": ids, **columns})
            return list(stub.StepMany(iter([request]), timeout=10))

        # 4 steps of 10 tokens: exactly the message budget, every step applied
        (reply,) = send(tokens=[5] * 40, lengths=[10] * 4)
        assert list(reply.steps) == [10] * 4 and not reply.errors
        error = refused(lambda: send(tokens=[5] * 41, lengths=[10, 10, 10, 11]))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "41 ids and 0 code points of text" in error.details()
        assert "max_tokens_per_message" in error.details()
        # texts count as their code points, tokens or not
        error = refused(
            lambda: send(tokens=[5, 5], lengths=[1, 1, 0, 0], texts=["", "", "a" * 19, "b" * 20])
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "2 ids and 39 code points of text" in error.details()  # 41 in all
        (reply,) = send(tokens=[5, 5], lengths=[1, 1, 0, 0], texts=["", "", "a" * 16, "b" * 16])
        assert list(reply.consumed) == [1, 1, 16, 16]
        # the answer's top entries: steps x top_k
        error = refused(lambda: send(session_ids=ids[:1] * 33, tokens=[5] * 33, top_k=1000))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "top_k = 1000 is out of range; allowed: at most 992 for 33 steps" in error.details()
        (reply,) = send(session_ids=ids[:1] * 32, tokens=[5] * 32, top_k=1000)
        assert not reply.errors


def test_a_request_over_max_request_bytes_is_refused_unread(
    sized: tuple[ServerThread, str, str],
) -> None:
    server, name, _ = sized
    with grpc.insecure_channel(server.address) as channel:
        stub = rnnserve_pb2_grpc.RnnServeStub(channel)
        session = stub.CreateSession(pb.CreateSessionRequest(model=name)).session_id
        big = pb.StepRequest(session_id=session, tokens=pb.TokenIds(ids=[5] * 5000))
        error = refused(lambda: stub.Step(big))
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert stub.Step(pb.StepRequest(session_id=session, text="x")).steps == 1


# ---------------------------------------------------------------- per-caller budgets

CALLERS = {name: f"{name}-secret-token" for name in ("alice", "bob", "carol", "dave", "erin")}
RATE = 20  # tokens per second: slow, so that the tests' own pauses refill little


@pytest.fixture(scope="module")
def metered(models_dir: Path) -> Iterator[ServerThread]:
    """Callers told apart by their tokens; each test has its own (a full bucket). Each
    may have 3 calls in flight and RATE tokens per second from a bucket of 30."""
    config = server_config(
        models_dir,
        auth_tokens=",".join(f"{name}:{token}" for name, token in CALLERS.items()),
        max_calls_per_caller=3,
        caller_tokens_per_s=RATE,
        caller_token_burst=30,
        max_tokens_per_request=10,
        max_generate_tokens=20,
        max_tokens_per_message=30,
    )
    with ServerThread(config) as server:
        yield server


def caller(server: ServerThread, name: str) -> Client:
    return Client(server.address, token=CALLERS[name])


def test_a_caller_runs_out_of_tokens_and_is_told_when_to_retry(
    metered: ServerThread, model_name: str
) -> None:
    with caller(metered, "alice") as alice, caller(metered, "bob") as bob:
        mine, theirs = alice.create_session(model_name), bob.create_session(model_name)
        for steps in (10, 20, 30):
            assert mine.step(tokens=[5] * 10).steps == steps  # the whole bucket
        with pytest.raises(ResourceExhausted) as raised:
            mine.step(tokens=[5] * 10)
        error = raised.value
        assert f"caller_tokens_per_s = {RATE}" in error.details
        assert "caller_token_burst = 30" in error.details
        assert error.retry_after_s is not None
        assert 0.25 < error.retry_after_s <= 10 / RATE  # most of 10 tokens' refill time
        assert f"retry in {math.ceil(error.retry_after_s * 1000)} ms" in error.details
        assert theirs.step(tokens=[5] * 10).steps == 10  # another caller's bucket is its own
        time.sleep(error.retry_after_s)
        assert mine.step(tokens=[5] * 10).steps == 40  # the bucket held them, as it said


def test_step_many_pays_step_by_step(metered: ServerThread, model_name: str) -> None:
    with caller(metered, "carol") as carol:
        sessions = [carol.create_session(model_name) for _ in range(30)]
        inputs = [StepInput(s.id, [5]) for s in sessions]
        first, second = list(carol.step_many([inputs, inputs]))
        assert not [r for r in first if isinstance(r, Exception)]  # 30 steps: the bucket
        paid = [r for r in second if not isinstance(r, Exception)]
        assert len(paid) < 30 // 2  # the bucket refilled only a little in between
        assert second[: len(paid)] == paid  # the steps it could pay for: the first ones
        for refusal in second[len(paid) :]:
            assert isinstance(refusal, ResourceExhausted)
            assert "caller_tokens_per_s" in refusal.details
        for session in sessions:
            session.close()


def test_a_generation_takes_its_max_tokens_up_front(metered: ServerThread, model_name: str) -> None:
    with caller(metered, "dave") as dave, dave.create_session(model_name) as session:
        session.step(tokens=[5] * 10)
        session.step(tokens=[5] * 10)
        session.step(tokens=[5] * 9)  # 1 of 30 left: 20 more need ~1 s of refill at RATE
        with pytest.raises(ResourceExhausted, match=r"tokens = 20 exceeds"):
            list(session.generate(max_tokens=20))  # would it stop early? it is not asked
        time.sleep(0.5)  # ~10 tokens back; had the refusal taken 20, none would be left
        assert session.step(tokens=[5]).steps == 30  # the refusal took nothing
        chunks = list(session.generate(max_tokens=5))
        assert chunks[-1].steps <= 30 + 5


def test_a_caller_has_so_many_calls_in_flight(metered: ServerThread, model_name: str) -> None:
    with caller(metered, "erin") as erin, caller(metered, "bob") as bob:
        session = erin.create_session(model_name)
        release = threading.Event()
        open_streams = hold_streams(erin, session.id, 3, release)
        try:
            with pytest.raises(ResourceExhausted, match="max_calls_per_caller") as raised:
                erin.list_models()
            assert "retry once one of them has ended" in raised.value.details
            assert bob.list_models()  # another caller: not counted with erin's calls
        finally:
            release.set()
            for stream in open_streams:
                stream.join(30)
        assert erin.list_models()  # the streams ended: their places are free
        session.close()


def test_without_tokens_the_caller_is_the_peer_address(models_dir: Path, model_name: str) -> None:
    config = server_config(models_dir, max_calls_per_caller=1)
    with ServerThread(config) as server, Client(server.address) as client:
        session = client.create_session(model_name)
        release = threading.Event()
        (holder,) = hold_streams(client, session.id, 1, release)
        try:
            with (
                Client(server.address) as other,  # another connection, the same address
                pytest.raises(ResourceExhausted, match="max_calls_per_caller"),
            ):
                other.list_models()
        finally:
            release.set()
            holder.join(30)
        client.close_session(session.id)


def test_the_defaults_keep_one_caller_from_taking_the_server() -> None:
    from rnnserve_server.config import ServerConfig

    defaults = ServerConfig()
    assert defaults.max_sessions_per_caller * 10 == defaults.max_sessions
    assert defaults.caller_tokens_per_s > 0
    assert defaults.caller_token_burst >= defaults.largest_request


def test_a_burst_smaller_than_the_largest_request_is_refused() -> None:
    from rnnserve_server.config import ServerConfig

    with pytest.raises(ValueError, match=r"caller_token_burst = 100 is invalid; allowed: >= 16384"):
        ServerConfig(caller_token_burst=100).validate()
    ServerConfig(caller_token_burst=100, caller_tokens_per_s=0).validate()  # no bucket at all


def test_a_sessions_limit_says_what_frees_room(models_dir: Path, model_name: str) -> None:
    config = server_config(models_dir, max_sessions_per_caller=1)
    with ServerThread(config) as server, Client(server.address) as client:
        with client.create_session(model_name):
            with pytest.raises(ResourceExhausted) as raised:
                client.create_session(model_name)
            assert "max_sessions_per_caller" in raised.value.details
            assert "retry once a session has been closed" in raised.value.details
            assert raised.value.retry_after_s is None
        with pytest.raises(InvalidArgument):
            client.create_session(model_name, idle_timeout_s=10**9)


def test_a_long_input_runs_in_chunks_exactly_as_in_one_run(
    server: ServerThread, model_name: str
) -> None:
    """A prompt runs FEED_CHUNK tokens at a time (others' work between the runs): the
    outcome is that of one run of the whole sequence."""
    import numpy as np

    from rnnserve_server.core import FEED_CHUNK
    from rnnserve_server.outputs import probabilities

    tokens = [4 + (i * 7) % 90 for i in range(2 * FEED_CHUNK + 276)]
    assert server.running is not None
    model = server.running.engine.repository.get(model_name)
    initial = model.runtime.initial_state[:, None, :]
    logits, _ = model.runtime.run_inputs(np.asarray(tokens, dtype=np.int64), initial)
    expected = probabilities(model, logits[0])
    with Client(server.address) as client, client.create_session(model_name) as session:
        result = session.step(tokens=tokens, return_distribution=True)
    assert result.steps == len(tokens)
    np.testing.assert_allclose(result.distribution, expected, rtol=0, atol=1e-6)
