"""The sync client against the scripted toy server: every method, streams, cancellation."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

import rnnserve
from rnnserve import Client, StepInput

if TYPE_CHECKING:
    from conftest import ToyServer


@pytest.fixture
def client(toy: ToyServer) -> Iterator[Client]:
    with Client(toy.address, timeout=10) as connected:
        yield connected


def test_models_are_listed_and_fetched(client: Client) -> None:
    char, labels = client.list_models()
    assert (char.name, char.version, char.shape, char.output) == (
        "toy-char",
        1,
        "many-to-many",
        "vocabulary",
    )
    assert char.vocabulary.special_tokens == {"eos": 28}
    assert labels.labels == ["negative", "positive"] and labels.output == "labels"
    assert client.get_model("toy-labels") == labels
    with pytest.raises(rnnserve.NotFound, match="'nope' is not loaded"):
        client.get_model("nope")


def test_sessions_step_with_text_or_tokens(client: Client, toy: ToyServer) -> None:
    with client.create_session("toy-char", idle_timeout_s=30) as session:
        assert session.model.name == "toy-char" and session.idle_timeout_s == 30
        first = session.step(text="ab")
        assert (first.session_id, first.steps, first.consumed) == (session.id, 2, 2)
        assert [(t.text, t.probability) for t in first.top[:2]] == [("c", 0.5), ("d", 0.25)]
        assert first.distribution is None
        second = client.step(session.id, [toy.alphabet.index("x")], top_k=0)
        assert (second.steps, second.top) == (3, [])
        full = session.step(text="y", return_distribution=True)
        assert full.distribution is not None and len(full.distribution) == 29
        assert full.distribution[toy.alphabet.index("z")] == 0.5
    assert toy.servicer.sessions == {}


def test_closing_reports_steps_and_tolerates_a_vanished_session(
    client: Client, toy: ToyServer
) -> None:
    session = client.create_session("toy-char")
    session.step(text="abc")
    assert session.close() == 3
    assert session.close() is None  # already closed: nothing to do
    gone = client.create_session("toy-char")
    toy.servicer.sessions.clear()  # as if the server expired it
    assert gone.close() is None
    with pytest.raises(rnnserve.NotFound):
        client.close_session(gone.id)


def test_a_failing_block_is_not_masked_by_closing(client: Client, toy: ToyServer) -> None:
    with pytest.raises(KeyError), client.create_session("toy-char"):
        toy.servicer.sessions.clear()
        raise KeyError("the caller's own error")


def test_server_errors_arrive_typed(client: Client) -> None:
    with client.create_session("toy-char") as session:
        with pytest.raises(rnnserve.InvalidArgument, match="'X' is not in the vocabulary"):
            session.step(text="aX")
        with pytest.raises(rnnserve.InvalidArgument, match="input is empty"):
            session.step(text="")
        assert session.step(text="a").steps == 1  # the failed calls changed nothing


def test_step_stream_answers_in_order(client: Client, toy: ToyServer) -> None:
    with client.create_session("toy-char") as a, client.create_session("toy-char") as b:
        requests = [StepInput(s.id, text=c, top_k=1) for c in "abc" for s in (a, b)]
        results = list(client.step_stream(requests))
    assert [r.session_id for r in results] == [a.id, b.id] * 3
    assert [r.top[0].text for r in results[::2]] == ["b", "c", "d"]
    assert [r.steps for r in results[1::2]] == [1, 2, 3]
    assert (toy.servicer.recorded.step_streams, toy.servicer.recorded.stream_requests) == (1, 6)


def test_step_stream_in_lockstep_through_a_queue(client: Client) -> None:
    """Each request depends on the previous result, as in type-ahead or greedy decoding."""
    with client.create_session("toy-char") as session:
        requests: queue.Queue[StepInput | None] = queue.Queue()
        results = client.step_stream(iter(requests.get, None))
        requests.put(StepInput(session.id, text="a"))
        text = ""
        for _ in range(5):
            predicted = next(results).top[0].text
            text += predicted
            requests.put(StepInput(session.id, text=predicted))
        requests.put(None)
        assert [r.steps for r in results] == [6]  # the answer to the last request
    assert text == "bcdef"


def test_step_stream_stops_at_the_first_failure(client: Client) -> None:
    with client.create_session("toy-char") as session:
        requests = [StepInput(session.id, text=t) for t in ("a", "b", "?", "c")]
        received = []
        with pytest.raises(rnnserve.InvalidArgument, match="'\\?'"):
            received.extend(client.step_stream(requests))
    assert [r.steps for r in received] == [1, 2]


def test_step_stream_hands_back_the_callers_own_exception(client: Client) -> None:
    with client.create_session("toy-char") as session:

        def requests() -> Iterator[StepInput]:
            yield StepInput(session.id, text="a")
            raise LookupError("no more input")

        received = []
        with pytest.raises(LookupError, match="no more input"):
            received.extend(client.step_stream(requests()))
    assert len(received) == 1


def test_generate_streams_chunks_and_says_why_it_ended(client: Client) -> None:
    with client.create_session("toy-char") as session:
        chunks = list(session.generate("ab", max_tokens=3))
        assert [c.text for c in chunks] == ["c", "d", "e"]
        assert [c.finish_reason for c in chunks] == [None, None, "length"]
        assert chunks[-1].steps == 5
        stopped = list(client.generate(session.id, max_tokens=50, stop=["hi"]))
        assert "".join(c.text for c in stopped) == "fghi"
        assert (stopped[-1].finish_reason, stopped[-1].matched_stop) == ("stop-string", "hi")
        assert session.generate_text(max_tokens=2) == "jk"
        assert client.generate_text(session.id, [0], max_tokens=2) == "bc"


def test_generate_checks_arguments_before_any_call(client: Client, toy: ToyServer) -> None:
    calls = len(toy.servicer.recorded.metadata)
    with pytest.raises(ValueError, match="max_tokens"):
        client.generate("s", "x", max_tokens=-5)
    assert len(toy.servicer.recorded.metadata) == calls


def wait_for(event: threading.Event) -> bool:
    return event.wait(timeout=5)


def test_breaking_out_of_generate_cancels_the_call(client: Client, toy: ToyServer) -> None:
    toy.servicer.token_delay_s = 0.02
    with client.create_session("toy-char") as session:
        for count, _chunk in enumerate(session.generate(max_tokens=1000), start=1):
            if count == 3:
                break
        assert wait_for(toy.servicer.recorded.generate_cancelled)


def test_closing_the_generator_cancels_the_call(client: Client, toy: ToyServer) -> None:
    toy.servicer.token_delay_s = 0.02
    with client.create_session("toy-char") as session:
        chunks = session.generate(max_tokens=1000)
        next(chunks)
        chunks.close()
        assert wait_for(toy.servicer.recorded.generate_cancelled)


def test_a_finished_generation_is_not_reported_as_cancelled(client: Client, toy: ToyServer) -> None:
    with client.create_session("toy-char") as session:
        assert session.generate_text(max_tokens=3) == "abc"
    time.sleep(0.2)
    assert not toy.servicer.recorded.generate_cancelled.is_set()


def test_per_call_timeout_overrides_the_default(client: Client, toy: ToyServer) -> None:
    toy.servicer.token_delay_s = 0.05
    with client.create_session("toy-char") as session:
        with pytest.raises(rnnserve.DeadlineExceeded):
            session.generate_text(max_tokens=100, timeout=0.3)
        assert session.generate_text(max_tokens=2) != ""  # the default (10 s) still applies


def test_the_token_reaches_an_insecure_server(toy: ToyServer) -> None:
    with Client(toy.address, token="s3cr3t") as client:
        client.list_models()
        with client.create_session("toy-char") as session:
            list(client.step_stream([StepInput(session.id, text="a")]))
            session.generate_text(max_tokens=1)
    metadata = toy.servicer.recorded.metadata
    assert len(metadata) >= 4
    assert all(m.get("authorization") == "Bearer s3cr3t" for m in metadata)
    assert all(m.get("user-agent", "").startswith("rnnserve-python/") for m in metadata)


def test_health_reports_the_serving_status(client: Client) -> None:
    assert client.health() == "SERVING"
    assert client.health("rnnserve.v1.RnnServe") == "SERVING"
    assert client.health("draining") == "NOT_SERVING"
    with pytest.raises(rnnserve.NotFound):
        client.health("no.such.Service")


def test_a_closed_client_refuses_calls(toy: ToyServer) -> None:
    client = Client(toy.address)
    client.close()
    with pytest.raises(ValueError, match="closed"):
        client.list_models()
