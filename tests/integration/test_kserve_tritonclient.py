"""The KServe v2 / Triton front through tritonclient[grpc] itself (from PyPI, in its own
virtual environment, as a subprocess), against the real server: metadata and config,
sequences with start and end, unary and streaming, compared with rnnserve.v1 for the same
inputs; interleaved sequences; a sequence carried across two replicas sharing Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import SHARED_STATE_KEYS, RedisServer, ServerThread, TritonClient, server_config

from rnnserve import Client, StepResult

TOP = ["TOP_K_IDS", "TOP_K_PROBABILITIES", "TOP_K_TEXTS", "STEPS"]
# One sequence: ids and text, one token and several; (input, request fields).
STEPS_OF_A_SEQUENCE: list[dict[str, Any]] = [
    {"text": "The "},
    {"ids": [7]},
    {"text": "q"},
    {"ids": [9, 14, 3]},
    {"text": "u"},
]


@pytest.fixture(scope="module")
def triton(server: ServerThread, tritonclient_python: Path) -> TritonClient:
    return TritonClient(tritonclient_python, server.address)


def manifest(package: Path) -> dict[str, Any]:
    return json.loads((package / "manifest.json").read_text())  # type: ignore[no-any-return]


def sequence_requests(
    model: str, sequence_id: int | str, steps: list[dict[str, Any]], **extra: Any
) -> list[dict[str, Any]]:
    """The requests of one sequence: start on the first, end on the last."""
    return [
        {
            "model": model,
            "sequence_id": sequence_id,
            "start": i == 0,
            "end": i == len(steps) - 1,
            "outputs": TOP,
            **step,
            **extra,
        }
        for i, step in enumerate(steps)
    ]


def reference(client: Client, model: str, steps: list[dict[str, Any]]) -> list[StepResult]:
    """The same inputs through rnnserve.v1, one session."""
    with client.create_session(model) as session:
        return [client.step(session.id, tokens=s.get("ids"), text=s.get("text")) for s in steps]


def assert_same_top(answer: dict[str, Any], expected: StepResult) -> None:
    outputs = answer["outputs"]
    assert outputs["TOP_K_IDS"] == [t.id for t in expected.top]
    assert outputs["TOP_K_TEXTS"] == [t.text for t in expected.top]
    np.testing.assert_allclose(
        outputs["TOP_K_PROBABILITIES"], [t.probability for t in expected.top], rtol=0, atol=2e-6
    )
    assert outputs["STEPS"] == [expected.steps]


def test_server_and_model_metadata(triton: TritonClient, tiny_package: Path) -> None:
    m = manifest(tiny_package)
    name, width = m["name"], m["tokenizer"]["size"]
    live, ready, server, model_ready, unknown_ready, meta, config = triton.run(
        {"call": "server_live"},
        {"call": "server_ready"},
        {"call": "server_metadata"},
        {"call": "model_ready", "model": name},
        {"call": "model_ready", "model": "no-such-model"},
        {"call": "model_metadata", "model": name},
        {"call": "model_config", "model": name},
    )
    assert live is True and ready is True and model_ready is True and unknown_ready is False
    assert server["name"] == "rnnserve" and "sequence" in server["extensions"]
    assert meta["name"] == name and meta["versions"] == [str(m["version"])]
    assert {t["name"]: (t["datatype"], t["shape"]) for t in meta["inputs"]} == {
        "INPUT_IDS": ("INT64", ["-1"]),
        "TEXT": ("BYTES", ["1"]),
    }
    assert {t["name"]: (t["datatype"], t["shape"]) for t in meta["outputs"]} == {
        "LOGITS": ("FP32", [str(width)]),
        "PROBABILITIES": ("FP32", [str(width)]),
        "TOP_K_IDS": ("INT64", ["-1"]),
        "TOP_K_PROBABILITIES": ("FP32", ["-1"]),
        "TOP_K_TEXTS": ("BYTES", ["-1"]),
        "STEPS": ("INT64", ["1"]),
    }
    config = config["config"]
    assert config.get("max_batch_size", 0) == 0
    batching = config["sequence_batching"]
    assert batching["max_sequence_idle_microseconds"] == str(600 * 1_000_000)
    (state,) = batching["state"]
    assert state["dims"] == [str(m["layers"]), str(m["hidden_size"])]
    assert state["data_type"] == "TYPE_FP32"
    assert config["parameters"]["cell"]["string_value"] == m["cell"]


def test_a_sequence_unary_gives_what_rnnserve_v1_gives(
    triton: TritonClient, client: Client, model_name: str
) -> None:
    expected = reference(client, model_name, STEPS_OF_A_SEQUENCE)
    requests = sequence_requests(model_name, 41, STEPS_OF_A_SEQUENCE)
    answers = triton.run(*({"call": "infer", "request": r} for r in requests))
    for answer, step in zip(answers, expected, strict=True):
        assert_same_top(answer, step)
    # ended by its last request: continuing it is what Triton refuses
    again = triton.infer(model=model_name, sequence_id=41, ids=[4], outputs=TOP)
    assert again["error"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert (
        "must specify the START flag on the first request of the sequence"
        in (again["error"]["message"])
    )


def test_a_sequence_streamed_gives_what_rnnserve_v1_gives(
    triton: TritonClient, client: Client, model_name: str
) -> None:
    expected = reference(client, model_name, STEPS_OF_A_SEQUENCE)
    answers = triton.stream(*sequence_requests(model_name, "stream-1", STEPS_OF_A_SEQUENCE))
    for answer, step in zip(answers, expected, strict=True):
        assert_same_top(answer, step)


def test_interleaved_sequences_stay_apart(
    triton: TritonClient, client: Client, model_name: str
) -> None:
    other = [{"ids": [5, 5]}, {"text": "x"}, {"ids": [12]}, {"text": "yz"}, {"ids": [30]}]
    first = sequence_requests(model_name, 7, STEPS_OF_A_SEQUENCE)
    second = sequence_requests(model_name, "7", other)  # a string id is another sequence
    mixed = [r for pair in zip(first, second, strict=True) for r in pair]
    expected_first = reference(client, model_name, STEPS_OF_A_SEQUENCE)
    expected_second = reference(client, model_name, other)
    streamed = triton.stream(*mixed)
    unary = triton.run(*({"call": "infer", "request": r} for r in mixed))
    for answers in (streamed, unary):
        for answer, step in zip(answers[0::2], expected_first, strict=True):
            assert_same_top(answer, step)
        for answer, step in zip(answers[1::2], expected_second, strict=True):
            assert_same_top(answer, step)


def test_the_whole_distribution_logits_and_classification(
    triton: TritonClient, client: Client, model_name: str
) -> None:
    with client.create_session(model_name) as session:
        expected = client.step(session.id, text="Hello", top_k=4, return_distribution=True)
    hello = {"model": model_name, "sequence_id": 99, "start": True, "end": True, "text": "Hello"}
    answer = triton.infer(
        **hello, outputs=["LOGITS", "PROBABILITIES", "TOP_K_IDS"], parameters={"top_k": 4}
    )["outputs"]
    assert expected.distribution is not None
    np.testing.assert_allclose(answer["PROBABILITIES"], expected.distribution, atol=2e-6)
    logits = np.asarray(answer["LOGITS"], dtype=np.float64)
    softmax = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(softmax, expected.distribution, atol=2e-6)
    assert answer["TOP_K_IDS"] == [t.id for t in expected.top]
    # Triton's classification extension: "value:index:label", most probable first
    classified = triton.infer(
        **hello, outputs=["PROBABILITIES", "LOGITS"], classes={"PROBABILITIES": 3, "LOGITS": 2}
    )["outputs"]
    entries = [entry.split(":", 2) for entry in classified["PROBABILITIES"]]
    assert [int(index) for _, index, _ in entries] == [t.id for t in expected.top[:3]]
    assert [label for _, _, label in entries] == [t.text for t in expected.top[:3]]
    np.testing.assert_allclose(
        [float(value) for value, _, _ in entries],
        [t.probability for t in expected.top[:3]],
        atol=1e-8 + 2e-6,
    )
    top_logits = [entry.split(":", 2) for entry in classified["LOGITS"]]
    assert [int(index) for _, index, _ in top_logits] == [t.id for t in expected.top[:2]]
    np.testing.assert_allclose(
        [float(v) for v, _, _ in top_logits], logits[[t.id for t in expected.top[:2]]], atol=1e-6
    )


def test_errors_come_as_tritonclient_expects(triton: TritonClient, model_name: str) -> None:
    unknown, no_id, no_start, bad_token = triton.run(
        {
            "call": "infer",
            "request": {"model": "nope", "sequence_id": 1, "start": True, "ids": [1]},
        },
        {"call": "infer", "request": {"model": model_name, "ids": [1]}},
        {"call": "infer", "request": {"model": model_name, "sequence_id": 555, "ids": [1]}},
        {
            "call": "infer",
            "request": {"model": model_name, "sequence_id": 556, "start": True, "ids": [100000]},
        },
    )
    assert unknown["error"] == {
        "status": "StatusCode.NOT_FOUND",
        "message": "Request for unknown model: 'nope' is not found",
    }
    assert no_id["error"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "must specify a non-zero or non-empty correlation ID" in no_id["error"]["message"]
    assert no_start["error"] == {
        "status": "StatusCode.INVALID_ARGUMENT",
        "message": f"inference request for sequence 555 to model '{model_name}' must specify "
        "the START flag on the first request of the sequence",
    }
    assert bad_token["error"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "INPUT_IDS.ids[0] = 100000 is out of range" in bad_token["error"]["message"]
    # in a stream a failed request is answered with its error and the stream goes on
    answers = triton.stream(
        {"model": model_name, "sequence_id": 557, "ids": [1], "outputs": TOP},
        {"model": model_name, "sequence_id": 557, "start": True, "ids": [1], "outputs": TOP},
        {"model": model_name, "sequence_id": 557, "ids": [100000], "outputs": TOP},
        {"model": model_name, "sequence_id": 557, "end": True, "ids": [2], "outputs": TOP},
    )
    assert "START flag" in answers[0]["error"]["message"]
    assert answers[1]["outputs"]["STEPS"] == [1]
    assert "out of range" in answers[2]["error"]["message"]
    assert answers[3]["outputs"]["STEPS"] == [2]  # the failed request changed nothing


@pytest.fixture(scope="module")
def replicas(models_dir: Path, redis_server: RedisServer) -> Iterator[list[ServerThread]]:
    config = server_config(models_dir, session_store=redis_server.url, state_keys=SHARED_STATE_KEYS)
    with ServerThread(config) as a, ServerThread(config) as b:
        yield [a, b]


def test_a_sequence_continues_on_another_replica(
    replicas: list[ServerThread], tritonclient_python: Path, client: Client, model_name: str
) -> None:
    one, two = (TritonClient(tritonclient_python, r.address) for r in replicas)
    expected = reference(client, model_name, STEPS_OF_A_SEQUENCE)
    requests = sequence_requests(model_name, 8, STEPS_OF_A_SEQUENCE)
    answers = [(one, two)[i % 2].infer(**r) for i, r in enumerate(requests)]
    for answer, step in zip(answers, expected, strict=True):
        assert_same_top(answer, step)
    ended = one.infer(model=model_name, sequence_id=8, ids=[1])
    assert "START flag" in ended["error"]["message"]


def test_a_restarted_sequence_is_never_taken_for_the_old_one(
    replicas: list[ServerThread], tritonclient_python: Path, client: Client, model_name: str
) -> None:
    """The first replica still holds its copy of a sequence that the second ended and
    started again under the same id: it continues the new one, not its copy."""
    one, two = (TritonClient(tritonclient_python, r.address) for r in replicas)
    old = sequence_requests(model_name, 9, STEPS_OF_A_SEQUENCE[:3])
    new_steps = [{"text": "x"}, {"ids": [11]}, STEPS_OF_A_SEQUENCE[2]]
    new = sequence_requests(model_name, 9, new_steps)
    one.infer(**old[0])
    one.infer(**old[1])
    two.infer(**old[2])  # ends it
    two.infer(**new[0])  # starts it again
    two.infer(**new[1])
    assert_same_top(one.infer(**new[2]), reference(client, model_name, new_steps)[2])
