"""Sessions through the real client against a real server: state, isolation, errors."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from support import ServerThread, server_config

from rnnserve import (
    Client,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
    StepInput,
)

TEXT_A = "the quick brown fox"
TEXT_B = "a stitch in time saves nine"


def distributions(client: Client, session_id: str, text: str) -> list[list[float]]:
    """The full next-token distribution after each character of text, one call each."""
    out = []
    for char in text:
        result = client.step(session_id, text=char, return_distribution=True)
        assert result.distribution is not None
        out.append(result.distribution)
    return out


def assert_same_distribution(got: list[float] | None, expected: list[float] | None) -> None:
    assert got is not None and expected is not None
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)
    assert int(np.argmax(got)) == int(np.argmax(expected))


def solo(client: Client, model: str, text: str) -> list[list[float]]:
    with client.create_session(model) as session:
        return distributions(client, session.id, text)


def test_interleaved_sessions_give_exactly_their_solo_outputs(
    client: Client, model_name: str
) -> None:
    alone_a, alone_b = solo(client, model_name, TEXT_A), solo(client, model_name, TEXT_B)
    with client.create_session(model_name) as a, client.create_session(model_name) as b:
        mixed_a, mixed_b = [], []
        for i in range(max(len(TEXT_A), len(TEXT_B))):
            if i < len(TEXT_B):
                mixed_b += distributions(client, b.id, TEXT_B[i])
            if i < len(TEXT_A):
                mixed_a += distributions(client, a.id, TEXT_A[i])
    assert mixed_a == alone_a  # bit-identical, not approximately equal
    assert mixed_b == alone_b
    assert alone_a[-1] != alone_b[-1]


def test_state_persists_across_calls_and_streams(client: Client, model_name: str) -> None:
    with client.create_session(model_name) as whole:
        one_call = whole.step(text=TEXT_A, return_distribution=True)
    assert one_call.steps == one_call.consumed == len(TEXT_A)
    with client.create_session(model_name) as split:
        split.step(text=TEXT_A[:5])
        split.step(text=TEXT_A[5:12])
        pieces = split.step(text=TEXT_A[12:], return_distribution=True)
    assert pieces.steps == len(TEXT_A)
    # Several tokens in one call may run the sequence graph, one token the step graph:
    # the same function, equal to float32 rounding.
    assert_same_distribution(pieces.distribution, one_call.distribution)
    with client.create_session(model_name) as streamed:
        results = list(
            client.step_stream(
                StepInput(streamed.id, text=c, return_distribution=True) for c in TEXT_A
            )
        )
    assert [r.steps for r in results] == list(range(1, len(TEXT_A) + 1))
    assert_same_distribution(results[-1].distribution, one_call.distribution)


def test_stream_results_keep_request_order_across_sessions(client: Client, model_name: str) -> None:
    expected_a, expected_b = solo(client, model_name, "abc"), solo(client, model_name, "xyz")
    with client.create_session(model_name) as a, client.create_session(model_name) as b:
        requests = [
            StepInput(sid, text=c, return_distribution=True)
            for pair in zip("abc", "xyz", strict=True)
            for sid, c in zip((a.id, b.id), pair, strict=True)
        ]
        results = list(client.step_stream(requests))
    assert [r.session_id for r in results] == [a.id, b.id] * 3
    assert [r.distribution for r in results[0::2]] == expected_a
    assert [r.distribution for r in results[1::2]] == expected_b


def test_top_k_and_the_full_distribution(client: Client, model_name: str) -> None:
    with client.create_session(model_name) as session:
        default = session.step(text="th")
        full = client.step(session.id, text="e", top_k=20, return_distribution=True)
        none = session.step(text=" ", top_k=0)
    assert len(default.top) == 5 and default.distribution is None
    assert full.distribution is not None
    assert sum(full.distribution) == pytest.approx(1.0, abs=1e-5)
    probabilities = [t.probability for t in full.top]
    assert probabilities == sorted(probabilities, reverse=True)
    ranked = sorted(range(len(full.distribution)), key=lambda i: -full.distribution[i])  # type: ignore[index]
    assert [t.id for t in full.top] == ranked[:20]
    assert none.top == [] and none.steps == 4


def test_closed_and_unknown_sessions_are_not_found(client: Client, model_name: str) -> None:
    session = client.create_session(model_name)
    session.step(text="ab")
    assert client.close_session(session.id) == 2
    with pytest.raises(NotFound, match="does not exist"):
        client.step(session.id, text="c")
    with pytest.raises(NotFound):
        client.close_session(session.id)
    with pytest.raises(NotFound):
        client.step("0" * 32, text="c")
    with pytest.raises(NotFound, match="model 'no-such-model' is not loaded"):
        client.create_session("no-such-model")


def test_bad_input_is_refused_and_hurts_no_session(client: Client, model_name: str) -> None:
    size = client.get_model(model_name).vocabulary.size
    control = solo(client, model_name, TEXT_A)
    with client.create_session(model_name) as victim, client.create_session(model_name) as other:
        victim.step(text=TEXT_A[:3])
        other.step(text=TEXT_B[:3])
        with pytest.raises(InvalidArgument, match=rf"input.ids\[1\] = {size} .*0 \.\. {size - 1}"):
            victim.step(tokens=[4, size])
        with pytest.raises(InvalidArgument, match="input is empty"):
            victim.step(text="")
        with pytest.raises(InvalidArgument, match=r"top_k = 1001 .*0 \.\. 1000"):
            victim.step(text="x", top_k=1001)
        # Nothing of the refused requests was applied: the victim continues as if alone.
        rest = distributions(client, victim.id, TEXT_A[3:])
        for got, expected in zip(rest, control[3:], strict=True):
            assert_same_distribution(got, expected)
        assert victim.step(text="!").steps == len(TEXT_A) + 1
        assert other.step(text="x").steps == 4


def test_limits_answer_resource_exhausted(models_dir: Path, model_name: str) -> None:
    config = server_config(models_dir, max_sessions=2, max_tokens_per_request=8)
    with ServerThread(config) as server, Client(server.address) as client:
        first = client.create_session(model_name)
        client.create_session(model_name)
        with pytest.raises(ResourceExhausted, match="max_sessions"):
            client.create_session(model_name)
        with pytest.raises(ResourceExhausted, match=r"input tokens = 9 .* limit of 8"):
            first.step(text="123456789")
        first.close()
        client.create_session(model_name)  # closing freed room for one more
        with pytest.raises(InvalidArgument, match="idle_timeout_s"):
            client.create_session(model_name, idle_timeout_s=10**9)


def test_idle_sessions_expire_and_free_their_state(models_dir: Path, model_name: str) -> None:
    config = server_config(models_dir, session_idle_timeout_s=1, max_session_idle_timeout_s=60)
    with ServerThread(config) as server, Client(server.address) as client:
        short = client.create_session(model_name)
        long = client.create_session(model_name, idle_timeout_s=60)
        assert short.idle_timeout_s == 1 and long.idle_timeout_s == 60
        short.step(text="abc")
        time.sleep(3)
        with pytest.raises(NotFound):
            short.step(text="d")
        assert long.step(text="d").steps == 1
        store = server.running.engine.store  # type: ignore[union-attr]
        assert server.run(lambda: (len(store), store.expired_total)) == (1, 1)
        pool = server.run(lambda: store.pool(server.running.engine.repository.get(model_name)))  # type: ignore[union-attr]
        assert server.run(lambda: pool.in_use) == 1
