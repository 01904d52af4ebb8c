"""Sessions in the shared store (a real redis-server): any replica continues any session.

Two real servers share one Redis; a third, with sessions in its own memory, is the
control run. Calls alternate between the two replicas and must give exactly what the
control gives, step for step.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from support import SHARED_STATE_KEYS, RedisServer, ServerThread, server_config, started

from rnnserve import (
    Client,
    FailedPrecondition,
    NotFound,
    ResourceExhausted,
    StepResult,
    Unavailable,
)
from rnnserve_server.config import ServerConfig
from rnnserve_server.errors import Aborted as ServerAborted

TOKENS = [4, 9, 5, 12, 7, 7, 20, 6, 11, 4, 15, 8]


@pytest.fixture(scope="module")
def replicas(models_dir: Path, redis_server: RedisServer) -> Iterator[list[Client]]:
    redis_server.flush()  # the per-caller limit below counts every session in Redis
    config = dataclasses.replace(shared(models_dir, redis_server.url), max_sessions_per_caller=6)
    with (
        ServerThread(config) as a,
        ServerThread(config) as b,
        Client(a.address, timeout=60) as one,
        Client(b.address, timeout=60) as two,
    ):
        yield [one, two]


def shared(models: Path, store: str) -> ServerConfig:
    """A replica's configuration: sessions in ``store``, the replicas' shared keys."""
    return server_config(models, session_store=store, state_keys=SHARED_STATE_KEYS)


def summary(result: StepResult) -> tuple[int, list[tuple[int, float]]]:
    return result.steps, [(t.id, t.probability) for t in result.top]


def test_alternating_replicas_equal_one_process(
    replicas: list[Client], client: Client, model_name: str
) -> None:
    with client.create_session(model_name) as control:
        expected = [summary(client.step(control.id, [t])) for t in TOKENS]
        expected_text = client.generate_text(control.id, max_tokens=30, seed=5)
    session = replicas[0].create_session(model_name)
    got = [summary(replicas[i % 2].step(session.id, [t])) for i, t in enumerate(TOKENS)]
    assert got == expected
    assert replicas[1].generate_text(session.id, max_tokens=30, seed=5) == expected_text
    replicas[0].close_session(session.id)


def test_a_stream_then_a_prompt_on_the_other_replica(
    replicas: list[Client], client: Client, model_name: str
) -> None:
    with client.create_session(model_name, seed=3) as control:
        list(client.step_stream(_inputs(control.id, TOKENS[:6])))
        expected = summary(client.step(control.id, TOKENS[6:]))
        expected_text = client.generate_text(control.id, max_tokens=25)
    session = replicas[1].create_session(model_name, seed=3)
    list(replicas[1].step_stream(_inputs(session.id, TOKENS[:6])))
    assert summary(replicas[0].step(session.id, TOKENS[6:])) == expected
    # the sampling generator travels with the session too
    assert replicas[1].generate_text(session.id, max_tokens=25) == expected_text
    replicas[1].close_session(session.id)


def _inputs(session_id: str, tokens: list[int]) -> Iterator[Any]:
    from rnnserve import StepInput

    for token in tokens:
        yield StepInput(session_id, [token])


def test_export_fork_and_close_work_from_any_replica(
    replicas: list[Client], model_name: str
) -> None:
    one, two = replicas
    session = one.create_session(model_name)
    one.step(session.id, TOKENS[:5])
    fork = two.fork_session(session.id)
    assert summary(one.step(fork.id, [3])) == summary(two.step(session.id, [3]))
    exported = one.export_session(session.id)
    with one.create_session(model_name, state=exported) as imported:
        assert summary(one.step(imported.id, [8])) == summary(two.step(session.id, [8]))
    assert two.close_session(session.id) == 7
    for replica in replicas:  # closed on one: gone for all, at once
        with pytest.raises(NotFound):
            replica.step(session.id, [4])
    two.close_session(fork.id)


def test_redis_keeps_the_idle_expiry(replicas: list[Client], model_name: str) -> None:
    session = replicas[0].create_session(model_name, idle_timeout_s=1)
    replicas[1].step(session.id, [4])
    time.sleep(0.6)
    replicas[0].step(session.id, [4])  # each call renews it, on either replica
    time.sleep(0.6)
    replicas[1].step(session.id, [4])
    time.sleep(1.3)
    for replica in replicas:
        with pytest.raises(NotFound):
            replica.step(session.id, [4])


def test_the_per_caller_limit_counts_every_replica(replicas: list[Client], model_name: str) -> None:
    opened = [replicas[i % 2].create_session(model_name) for i in range(6)]
    for replica in replicas:
        with pytest.raises(ResourceExhausted, match="max_sessions_per_caller"):
            replica.create_session(model_name)
    replicas[1].close_session(opened[0].id)
    opened[0] = replicas[0].create_session(model_name)  # room again
    for session in opened:
        replicas[0].close_session(session.id)


def test_a_retried_step_is_applied_once(replicas: list[Client], model_name: str) -> None:
    from rnnserve.v1 import rnnserve_pb2 as pb
    from rnnserve.v1 import rnnserve_pb2_grpc

    session = replicas[0].create_session(model_name)
    answers = []
    for address in (replicas[0].address, replicas[1].address, replicas[0].address):
        with grpc.insecure_channel(address) as channel:
            stub = rnnserve_pb2_grpc.RnnServeStub(channel)
            request = pb.StepRequest(
                session_id=session.id, tokens=pb.TokenIds(ids=[5, 6]), request_id="r-1"
            )
            answers.append(stub.Step(request))
    assert [a.steps for a in answers] == [2, 2, 2]
    assert answers[0].top == answers[1].top == answers[2].top
    assert replicas[1].step(session.id, [4]).steps == 3
    replicas[0].close_session(session.id)


def test_a_save_from_a_stale_copy_is_refused(
    models_dir: Path, redis_server: RedisServer, model_name: str
) -> None:
    """Two replicas both change one session at once: the record's revision lets only
    the first save win; the loser answers ABORTED and nothing of the winner is lost."""
    config = shared(models_dir, redis_server.url)
    with (
        ServerThread(config) as a,
        ServerThread(config) as b,
        Client(a.address) as one,
        Client(b.address) as two,
    ):
        session = one.create_session(model_name)
        two.step(session.id, [4])  # b holds a copy at that revision
        one.step(session.id, [5])  # a moves the record on
        assert b.running is not None
        store = b.running.engine.store
        copy = b.run(lambda: store._sessions[session.id])
        with pytest.raises(ServerAborted, match="changed by another call"):
            b.call(store.save(copy))  # b saving a step made on its stale copy
        assert two.step(session.id, [6]).steps == 3  # b reloads: a's step was kept
        one.close_session(session.id)


def test_a_session_of_a_model_this_replica_lacks(
    models_dir: Path, redis_server: RedisServer, model_name: str, tmp_path: Path
) -> None:
    with (
        ServerThread(shared(models_dir, redis_server.url)) as a,
        ServerThread(shared(tmp_path, redis_server.url)) as b,
        Client(a.address) as one,
        Client(b.address) as two,
    ):
        session = one.create_session(model_name)
        with pytest.raises(FailedPrecondition, match="not loaded on this replica"):
            two.step(session.id, [4])
        one.close_session(session.id)


def test_an_unreachable_store(models_dir: Path, tmp_path: Path) -> None:
    """At start: a clear refusal. Later (Redis gone): UNAVAILABLE, and the server lives."""
    config = shared(models_dir, f"unix://{tmp_path}/none.sock")
    with (
        pytest.raises(RuntimeError, match=r"session store .* cannot be reached"),
        ServerThread(config),
    ):
        pass
    with (
        started(RedisServer(tmp_path)) as redis,
        ServerThread(shared(models_dir, redis.url)) as a,
        Client(a.address) as one,
    ):
        session = one.create_session(next(m.name for m in one.list_models()))
        redis.__exit__()
        with pytest.raises(Unavailable, match="cannot be reached"):
            one.step(session.id, [4])
        assert one.health() == "SERVING"


def _generate(address: str, session_id: str, request_id: str, stop_after: int = 0) -> list[int]:
    """Raw Generate (no client retries): the token ids; ``stop_after`` cancels the call
    once that many have arrived, as a caller that goes away would."""
    from rnnserve.v1 import rnnserve_pb2 as pb
    from rnnserve.v1 import rnnserve_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = rnnserve_pb2_grpc.RnnServeStub(channel)
        request = pb.GenerateRequest(session_id=session_id, max_tokens=40, request_id=request_id)
        call = stub.Generate(request)
        ids: list[int] = []
        for response in call:
            ids.extend(t.id for t in response.tokens)
            if stop_after and len(ids) >= stop_after:
                call.cancel()
                break
        return ids


@pytest.mark.parametrize("where", ["one process", "two replicas"])
def test_a_retried_generation_is_the_uninterrupted_one(
    where: str, replicas: list[Client], client: Client, model_name: str
) -> None:
    """A completed Generate retried gives its tokens again without sampling more; one
    cut off by its caller and retried gives exactly the uninterrupted call's tokens."""
    addresses = [client.address] * 2 if where == "one process" else [c.address for c in replicas]
    with Client(addresses[0]) as first:
        with first.create_session(model_name, seed=11) as control:
            expected = _generate(addresses[0], control.id, "")
        session = first.create_session(model_name, seed=11)
        assert _generate(addresses[0], session.id, "g-1", stop_after=5)[:5] == expected[:5]
        time.sleep(0.2)  # the server notices the cancellation and keeps the cut-off call
        assert _generate(addresses[1], session.id, "g-1") == expected
        assert _generate(addresses[1], session.id, "g-1") == expected  # again, as it was
        with first.create_session(model_name, seed=11) as control:
            _generate(addresses[0], control.id, "")
            first.step(control.id, [4])
            expected_after = _generate(addresses[0], control.id, "")
        first.step(session.id, [4])  # now the last call is another: g-1 is a new call
        assert _generate(addresses[1], session.id, "g-1") == expected_after
        first.close_session(session.id)
