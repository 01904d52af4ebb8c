"""Concurrent calls on one session follow docs/api.md's rule, exactly.

Within a server: one call at a time per session, in the order received; a Generate is
one call from its prompt to its last token; CloseSession does not wait its turn. Across
replicas sharing a store: no queue; the call that saves second answers ABORTED, keeping
nothing.

A generation is held open without timing tricks: the caller reads its stream through a
channel with a small flow-control window and stops reading, so the server cannot send
(nor produce) more than a few tokens until it reads again.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from support import SHARED_STATE_KEYS, RedisServer, ServerThread, server_config

from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc

# Without BDP probing the stream window stays this small: a few dozen one-token messages.
SMALL_WINDOW = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
LONG = 4000  # tokens of a held generation: far more than the window lets through
WAITED = 0.5  # seconds a queued call is watched not to finish


@dataclasses.dataclass(frozen=True)
class Stubs:
    held: rnnserve_pb2_grpc.RnnServeStub  # a channel with a small window, for held streams
    free: rnnserve_pb2_grpc.RnnServeStub  # an ordinary channel


def stubs_of(address: str) -> Iterator[Stubs]:
    with (
        grpc.insecure_channel(address, options=SMALL_WINDOW) as held,
        grpc.insecure_channel(address) as free,
    ):
        yield Stubs(rnnserve_pb2_grpc.RnnServeStub(held), rnnserve_pb2_grpc.RnnServeStub(free))


@pytest.fixture(scope="module")
def stubs(server: ServerThread) -> Iterator[Stubs]:
    yield from stubs_of(server.address)


def new_session(stub: Any, model: str, seed: int = 3) -> str:
    return str(stub.CreateSession(pb.CreateSessionRequest(model=model, seed=seed)).session_id)


def held_generation(stubs: Stubs, session: str) -> tuple[Any, Any]:
    """A greedy generation of LONG tokens, its first message read and the rest held."""
    stream = stubs.held.Generate(
        pb.GenerateRequest(session_id=session, max_tokens=LONG, temperature=0.0)
    )
    return stream, next(stream)


def steps_of(responses: list[Any]) -> list[int]:
    """The step count after each token of a Generate's responses (one token each)."""
    return [r.steps for r in responses if r.tokens]


def token_ids(responses: list[Any]) -> list[int]:
    return [t.id for r in responses for t in r.tokens]


def pending(future: grpc.Future) -> bool:
    """The call has not finished after WAITED seconds."""
    try:
        future.result(timeout=WAITED)
    except grpc.FutureTimeoutError:
        return True
    return False


def distribution(stub: Any, session: str, text: str) -> list[float]:
    step = stub.Step(pb.StepRequest(session_id=session, text=text, return_distribution=True))
    return list(step.distribution)


def test_fork_export_step_and_step_many_wait_for_a_generation(
    stubs: Stubs, model_name: str
) -> None:
    session = new_session(stubs.free, model_name)
    stream, first = held_generation(stubs, session)
    free = stubs.free
    fork = free.ForkSession.future(pb.ForkSessionRequest(session_id=session))
    export = free.ExportSession.future(pb.ExportSessionRequest(session_id=session))
    step = free.Step.future(pb.StepRequest(session_id=session, text="q"))
    many = free.StepMany(iter([pb.StepManyRequest(session_ids=[session], tokens=[9])]))
    assert all(pending(f) for f in (fork, export, step))  # queued behind the generation
    rest = list(stream)
    end = rest[-1].steps
    assert steps_of([first, *rest]) == list(range(1, LONG + 1)) and end == LONG
    # In arrival order, each after the generation's last token:
    exported = export.result(timeout=30)
    assert exported.steps == end
    assert step.result(timeout=30).steps == end + 1
    assert next(many).steps == [end + 2]
    # The fork and the export hold the state after the last token, nothing later.
    copy = fork.result(timeout=30).session_id
    imported = free.CreateSession(pb.CreateSessionRequest(model=model_name, state=exported.state))
    assert distribution(free, copy, "z") == distribution(free, imported.session_id, "z")
    for other in (copy, imported.session_id, session):
        free.CloseSession(pb.CloseSessionRequest(session_id=other))


def test_a_second_generation_starts_where_the_first_ended(stubs: Stubs, model_name: str) -> None:
    session = new_session(stubs.free, model_name)
    stream, first = held_generation(stubs, session)
    assert first.steps == 1
    second = stubs.free.Generate(
        pb.GenerateRequest(session_id=session, max_tokens=5, temperature=0.0)
    )
    arrived: queue.Queue[Any] = queue.Queue()
    threading.Thread(target=lambda: arrived.put(list(second)), daemon=True).start()
    with pytest.raises(queue.Empty):  # nothing of it while the first one runs
        arrived.get(timeout=WAITED)
    assert list(stream)[-1].steps == LONG
    later = arrived.get(timeout=30)
    assert steps_of(later) == list(range(LONG + 1, LONG + 6))
    stubs.free.CloseSession(pb.CloseSessionRequest(session_id=session))


def test_many_generations_at_once_run_one_after_another(stubs: Stubs, model_name: str) -> None:
    """24 Generate calls sent together: each call's tokens are consecutive steps, the
    calls tile the session's steps, and replaying them one by one in the order they ran
    on a session with the same seed gives the same tokens."""
    session = new_session(stubs.free, model_name, seed=11)
    results: list[list[Any]] = [[] for _ in range(24)]

    def generate(session: str) -> list[Any]:
        request = pb.GenerateRequest(session_id=session, max_tokens=8, temperature=1.0)
        return list(stubs.free.Generate(request))

    def run(i: int) -> None:
        results[i] = generate(session)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    # Where each call started: before its first token, or where it ended at once.
    starts = []
    for responses in results:
        steps = steps_of(responses)
        if steps:
            assert steps == list(range(steps[0], steps[0] + len(steps)))  # consecutive
            starts.append((steps[0] - 1, 1))
        else:  # the end token came first: it ended where the session stood
            starts.append((responses[-1].steps, 0))
    order = sorted(range(24), key=lambda i: starts[i])
    end = 0
    for i in order:
        assert starts[i][0] == end  # no gap, no overlap
        end += len(steps_of(results[i]))
    assert stubs.free.CloseSession(pb.CloseSessionRequest(session_id=session)).steps == end
    control = new_session(stubs.free, model_name, seed=11)
    for i in order:
        assert token_ids(generate(control)) == token_ids(results[i])
    stubs.free.CloseSession(pb.CloseSessionRequest(session_id=control))


def test_close_does_not_wait_and_ends_the_calls_in_flight_and_queued(
    stubs: Stubs, model_name: str
) -> None:
    session = new_session(stubs.free, model_name)
    stream, first = held_generation(stubs, session)
    queued = stubs.free.Step.future(pb.StepRequest(session_id=session, text="q"))
    assert pending(queued)
    closed = stubs.free.CloseSession.future(pb.CloseSessionRequest(session_id=session))
    # The session is closed at once: a new call is refused while the generation is held.
    with pytest.raises(grpc.RpcError) as refused:
        stubs.free.Step(pb.StepRequest(session_id=session, text="q"))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    delivered = [first]
    with pytest.raises(grpc.RpcError) as ended:
        for response in stream:
            delivered.append(response)
    assert ended.value.code() == grpc.StatusCode.NOT_FOUND  # at its next token
    assert len(delivered) < LONG
    with pytest.raises(grpc.RpcError) as waited:
        queued.result(timeout=30)
    assert waited.value.code() == grpc.StatusCode.NOT_FOUND
    # Every token delivered was fed, and nothing after the last one.
    assert closed.result(timeout=30).steps == delivered[-1].steps


def test_a_call_cancelled_while_it_waits_changes_nothing(stubs: Stubs, model_name: str) -> None:
    session = new_session(stubs.free, model_name)
    stream, _ = held_generation(stubs, session)
    waiting = stubs.free.Step.future(pb.StepRequest(session_id=session, text="abc"))
    assert pending(waiting)
    waiting.cancel()
    rest = list(stream)
    after = stubs.free.Step(pb.StepRequest(session_id=session, text="x"))
    assert after.steps == rest[-1].steps + 1  # the cancelled step was never applied
    stubs.free.CloseSession(pb.CloseSessionRequest(session_id=session))


def test_across_replicas_the_second_save_is_aborted(
    models_dir: Path, redis_server: RedisServer, model_name: str
) -> None:
    """Through two replicas nothing queues: a Step through B runs while A's generation
    is held, and the generation, saving after it, answers ABORTED and keeps nothing."""
    config = server_config(models_dir, session_store=redis_server.url, state_keys=SHARED_STATE_KEYS)
    with ServerThread(config) as a, ServerThread(config) as b:
        for one, two in zip(stubs_of(a.address), stubs_of(b.address), strict=True):
            session = new_session(one.free, model_name)
            one.free.Step(pb.StepRequest(session_id=session, text="ab"))
            stream, first = held_generation(one, session)
            assert first.steps == 3
            assert two.free.Step(pb.StepRequest(session_id=session, text="c")).steps == 3
            with pytest.raises(grpc.RpcError) as aborted:
                list(stream)
            assert aborted.value.code() == grpc.StatusCode.ABORTED
            exported = one.free.ExportSession(pb.ExportSessionRequest(session_id=session))
            assert exported.steps == 3  # "ab" then B's "c": nothing of the generation
            one.free.CloseSession(pb.CloseSessionRequest(session_id=session))
