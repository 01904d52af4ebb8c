"""Generation through the real client: golden parity with torch, sampling, stops, cancel."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from support import ServerThread, copy_package, edit_manifest, server_config

from rnnserve import Client, FailedPrecondition, InvalidArgument, ResourceExhausted

PROMPT = "The "


@pytest.fixture(scope="module")
def torch_greedy(models_dir: Path) -> tuple[list[int], int]:
    """200 greedy tokens after PROMPT from the torch model of the tiny checkpoint, and eos."""
    from rnnserve_train.api import greedy_tokens, load_checkpoint, tiny_checkpoint

    model, tokenizer, _ = load_checkpoint(tiny_checkpoint(models_dir))
    tokens = greedy_tokens(model, tokenizer, tokenizer.encode(PROMPT), 200)
    return tokens, tokenizer.special_tokens["eos"]


def test_served_greedy_generation_equals_torch(
    client: Client, model_name: str, torch_greedy: tuple[list[int], int]
) -> None:
    expected, eos = torch_greedy
    with client.create_session(model_name) as session:
        chunks = list(session.generate(PROMPT, max_tokens=200, temperature=0))
    served = [t.id for c in chunks for t in c.tokens]
    if chunks[-1].finish_reason == "end-token":  # the server stops at eos, torch goes on
        assert expected[len(served)] == eos
        expected = expected[: len(served)]
    else:
        assert chunks[-1].finish_reason == "length"
    assert served == expected
    assert chunks[-1].steps == len(PROMPT) + len(served)


def test_step_by_step_argmax_equals_torch(
    client: Client, model_name: str, torch_greedy: tuple[list[int], int]
) -> None:
    expected, _ = torch_greedy
    with client.create_session(model_name) as session:
        result = session.step(text=PROMPT, top_k=1)
        served = []
        for _ in range(200):
            token = result.top[0].id
            served.append(token)
            result = session.step(tokens=[token], top_k=1)
    assert served == expected


def test_text_arrives_token_by_token_and_state_continues(client: Client, model_name: str) -> None:
    with client.create_session(model_name) as session:
        chunks = list(session.generate(PROMPT, max_tokens=30, temperature=0))
        assert all(len(c.tokens) == 1 for c in chunks)
        assert [c.steps for c in chunks] == list(range(len(PROMPT) + 1, len(PROMPT) + 31))
        assert "".join(c.text for c in chunks) == "".join(t.text for c in chunks for t in c.tokens)
        more = list(session.generate(max_tokens=5, temperature=0))  # no prompt: continue
        assert more[-1].steps == len(PROMPT) + 35
    with client.create_session(model_name) as again:
        first = list(again.generate(PROMPT, max_tokens=35, temperature=0))
    joined = [t.id for c in chunks + more for t in c.tokens]
    assert joined == [t.id for c in first for t in c.tokens]


def test_seeded_sampling_repeats_and_seeds_differ(client: Client, model_name: str) -> None:
    def sample(seed: int) -> str:
        with client.create_session(model_name) as session:
            return session.generate_text(PROMPT, max_tokens=60, temperature=1.0, seed=seed)

    assert sample(42) == sample(42)
    assert len({sample(seed) for seed in range(4)}) > 1


def test_stop_string_ends_generation_where_it_matches(client: Client, model_name: str) -> None:
    with client.create_session(model_name) as session:
        free = session.generate_text(PROMPT, max_tokens=60, temperature=0)
    stop = free[10:13]
    assert len(stop) == 3
    with client.create_session(model_name) as session:
        chunks = list(session.generate(PROMPT, max_tokens=60, temperature=0, stop=[stop]))
    text = "".join(c.text for c in chunks)
    assert chunks[-1].finish_reason == "stop-string" and chunks[-1].matched_stop == stop
    assert text == free[: free.index(stop) + len(stop)]


def test_invalid_generation_parameters(client: Client, model_name: str) -> None:
    with client.create_session(model_name) as session:
        cases = [
            ({"temperature": -1.0}, r"temperature = -1\.0 .*allowed: 0 \.\. 100"),
            ({"temperature": float("nan")}, r"temperature = nan"),
            ({"top_p": 1.5}, r"top_p = 1\.5 .*allowed: \(0, 1\]"),
            ({"top_k": 10**6}, r"top_k = 1000000 .*allowed: 0 \.\. "),
            ({"stop": [""]}, r"stop\[0\]"),
        ]
        for kwargs, message in cases:
            with pytest.raises(InvalidArgument, match=message):
                list(session.generate(PROMPT, max_tokens=5, **kwargs))  # type: ignore[arg-type]
        with pytest.raises(ResourceExhausted, match="max_generate_tokens"):
            list(session.generate(PROMPT, max_tokens=10**6))
        chunks = list(session.generate(max_tokens=3, temperature=0))
        assert chunks[-1].steps == 3  # the refused calls fed nothing, not even the prompt


def test_cancelling_stops_the_work(server: ServerThread, client: Client, model_name: str) -> None:
    with client.create_session(model_name) as session:
        stream = session.generate(PROMPT, max_tokens=4000, temperature=1.0, seed=1)
        received = [next(stream) for _ in range(5)]
        stream.close()  # cancels the RPC
        deadline = time.monotonic() + 10
        store = server.running.engine.store  # type: ignore[union-attr]
        live = server.run(lambda: next(s for s in store.open_sessions() if s.id == session.id))
        while server.run(live.lock.locked) and time.monotonic() < deadline:
            time.sleep(0.02)
        settled = server.run(lambda: live.steps)
        time.sleep(0.3)
        assert server.run(lambda: live.steps) == settled < 200  # nothing runs on
        assert settled >= received[-1].steps
        # The session is free for the next call and continues from what was fed.
        assert session.step(text="x").steps == settled + 1


def test_label_heads_step_but_do_not_generate(tiny_package: Path, tmp_path: Path) -> None:
    """A package whose head is declared as labels: Step names labels, Generate is refused."""

    package = copy_package(tiny_package, tmp_path, "labelled")
    size = json.loads((package / "manifest.json").read_text())["tokenizer"]["size"]
    labels = [f"class-{i}" for i in range(size)]
    edit_manifest(package, lambda m: m.update(output={"kind": "labels", "labels": labels}))
    with ServerThread(server_config(tmp_path)) as server, Client(server.address) as client:
        assert client.get_model("labelled").labels == labels
        with client.create_session("labelled") as session:
            top = session.step(text="abc", top_k=3).top
            assert all(t.text == labels[t.id] for t in top)
            with pytest.raises(FailedPrecondition, match="Generate needs a vocabulary"):
                list(session.generate(max_tokens=3))


def test_sigmoid_heads_give_independent_label_probabilities(
    tiny_package: Path, tmp_path: Path, client: Client, model_name: str
) -> None:
    """Relabel the LM's head as sigmoids: q_i = sigmoid(l_i), so logit(q_i) - logit(q_j)
    must equal log p_i - log p_j of the softmax the LM gives for the same text."""
    import numpy as np

    package = copy_package(tiny_package, tmp_path, "multilabel")
    size = json.loads((package / "manifest.json").read_text())["tokenizer"]["size"]
    labels = [f"tag-{i}" for i in range(size)]
    edit_manifest(package, lambda m: m.update(output={"kind": "sigmoid", "labels": labels}))
    with client.create_session(model_name) as lm:
        p = np.array(lm.step(text="abc", return_distribution=True).distribution, np.float64)
    with ServerThread(server_config(tmp_path)) as server, Client(server.address) as other:
        with other.create_session("multilabel") as session:
            result = session.step(text="abc", top_k=3, return_distribution=True)
        assert result.distribution is not None
        q = np.array(result.distribution, dtype=np.float64)
        assert not np.isclose(q.sum(), 1.0, atol=1e-3)  # independent, not a distribution
        logit_q = np.log(q) - np.log1p(-q)
        np.testing.assert_allclose(logit_q - logit_q[0], np.log(p) - np.log(p[0]), atol=1e-3)
        assert [t.text for t in result.top] == [labels[i] for i in np.argsort(-q)[:3]]


def test_several_tokens_per_message(client: Client, model_name: str) -> None:
    def run(per_message: int) -> list[list[int]]:
        with client.create_session(model_name) as session:
            chunks = session.generate(PROMPT, max_tokens=30, seed=9, tokens_per_message=per_message)
            return [[t.id for t in chunk.tokens] for chunk in chunks]

    one_each, grouped = run(0), run(8)
    flat_one = [t for chunk in one_each for t in chunk]
    flat_grouped = [t for chunk in grouped for t in chunk]
    assert flat_grouped == flat_one  # the same tokens, in fewer messages
    assert all(len(c) <= 1 for c in one_each) and len(one_each) >= len(flat_one)
    assert all(len(c) == 8 for c in grouped[:-1]) and len(grouped[-1]) <= 8
    assert len(grouped) == -(-len(flat_one) // 8) or len(grouped[-1]) == 0
    with pytest.raises(InvalidArgument, match=r"tokens_per_message = 257 .*0 \.\. 256"):
        run(257)
