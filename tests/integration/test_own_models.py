"""Users' own models served: PyTorch modules the zoo never uses (among them a
float-vector LSTM regressor), packaged with package_torch, and a package written by hand
around an ONNX step graph (onnx.helper, no package_torch). Through the raw stubs
generated from proto/: the served outputs equal PyTorch's (or numpy's) over 200
fed-back steps, step by step and in StepMany beside other sessions."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from own_models import IDS, LABELS, VOCABULARY, trained_modules
from support import ServerThread, server_config

from rnnserve.v1 import rnnserve_pb2 as pb
from rnnserve.v1 import rnnserve_pb2_grpc
from rnnserve_train import package_torch

pytestmark = pytest.mark.slow
STEPS = 200
TOKEN_MODELS = {
    "word-lstm": {"vocabulary": VOCABULARY},
    "word-gru": {"vocabulary": VOCABULARY},
    "word-class-rnn": {"vocabulary": VOCABULARY, "labels": LABELS},
    "two-speed": {"vocabulary": VOCABULARY},
}
EXPECTED_CELLS = {"word-lstm": "lstm", "word-gru": "gru-torch", "word-class-rnn": "rnn-relu"}
VECTOR, VECTOR_SIZE = "vector-lstm", 4


def vector_inputs() -> np.ndarray:
    """The regressor's inputs: STEPS seeded vectors, [STEPS, 4]."""
    return np.random.default_rng(11).normal(size=(STEPS, VECTOR_SIZE)).astype(np.float32)


def torch_values(module: torch.nn.Module, vectors: np.ndarray) -> np.ndarray:
    """The regressor's own output after each vector: forward, [T, 2]."""
    with torch.no_grad():
        return module(torch.from_numpy(vectors)[None])[0].numpy()  # type: ignore[no-any-return]


def torch_probabilities(module: torch.nn.Module, tokens: torch.Tensor) -> np.ndarray:
    """The module's own answer after each of ``tokens`` [T]: softmax of forward, [T, K]."""
    batch_first = getattr(getattr(module, "gru", None), "batch_first", True)
    with torch.no_grad():
        result = module(tokens[None] if batch_first else tokens[:, None])
    logits = result[0] if isinstance(result, tuple) else result
    logits = logits[0] if batch_first else logits[:, 0]
    return torch.softmax(logits.double(), -1).numpy()


HAND_VOCABULARY = ["<unk>", "a", "b", "c", "d", "e"]
HAND_HIDDEN = 6


def hand_weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "E": rng.normal(0, 0.8, (len(HAND_VOCABULARY), HAND_HIDDEN)).astype(np.float32),
        "R": rng.normal(0, 0.5, (HAND_HIDDEN, HAND_HIDDEN)).astype(np.float32),
        "W_y": rng.normal(0, 1.0, (HAND_HIDDEN, len(HAND_VOCABULARY))).astype(np.float32),
    }


def write_hand_package(root: Path) -> Path:
    """A package written as a user would by hand: a custom cell h' = tanh(E[x] + h R),
    logits = h' W_y, as two ONNX graphs made with onnx.helper, and a manifest."""
    package = root / "hand-made" / "1"
    package.mkdir(parents=True)
    w = hand_weights()
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]
    inits.append(numpy_helper.from_array(np.array(0, np.int64), "zero"))
    state_in = helper.make_tensor_value_info("state", TensorProto.FLOAT, [1, "batch", HAND_HIDDEN])
    logits = helper.make_tensor_value_info(
        "logits", TensorProto.FLOAT, ["batch", len(HAND_VOCABULARY)]
    )
    step = helper.make_graph(
        [
            helper.make_node("Gather", ["E", "tokens"], ["embedded"]),
            helper.make_node("Gather", ["state", "zero"], ["h"], axis=0),
            helper.make_node("MatMul", ["h", "R"], ["recurrent"]),
            helper.make_node("Add", ["embedded", "recurrent"], ["pre"]),
            helper.make_node("Tanh", ["pre"], ["h_new"]),
            helper.make_node("MatMul", ["h_new", "W_y"], ["logits"]),
            helper.make_node("Unsqueeze", ["h_new", "axes"], ["state_out"]),
        ],
        "step",
        [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch"]), state_in],
        [
            logits,
            helper.make_tensor_value_info(
                "state_out", TensorProto.FLOAT, [1, "batch", HAND_HIDDEN]
            ),
        ],
        initializer=[*inits, numpy_helper.from_array(np.array([0], np.int64), "axes")],
    )
    head = helper.make_graph(
        [
            helper.make_node("Gather", ["state", "zero"], ["h"], axis=0),
            helper.make_node("MatMul", ["h", "W_y"], ["logits"]),
        ],
        "head",
        [state_in],
        [logits],
        initializer=[numpy_helper.from_array(w["W_y"], "W_y"), inits[-1]],
    )
    for name, graph in (("step", step), ("head", head)):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(package / f"{name}.onnx"))
    (package / "vocab.json").write_text(json.dumps({"tokens": HAND_VOCABULARY}))
    np.savez(package / "weights.npz", **w)
    (package / "MODEL_CARD.md").write_text("# hand-made\n\nA step graph written by hand.\n")
    manifest = {
        "format_version": 2, "name": "hand-made", "version": 1, "description": "by hand",
        "shape": "many-to-many", "cell": "custom", "layers": 1, "hidden_size": HAND_HIDDEN,
        "input": {"kind": "tokens", "size": 0},
        "tokenizer": {"kind": "char", "vocabulary_file": "vocab.json",
                      "size": len(HAND_VOCABULARY), "special_tokens": {"unk": 0},
                      "normalize": "NFC", "lowercase": False},
        "output": {"kind": "vocabulary", "labels": [], "values": 0},
        "state": {"width": HAND_HIDDEN, "parts": [{"name": "h", "rows": 1, "bound": 1.0}]},
        "initial_state": {"kind": "zeros", "token": None, "file": None},
        "graphs": {
            "step": {"file": "step.onnx", "inputs": ["tokens", "state"],
                     "outputs": ["logits", "state_out"]},
            "head": {"file": "head.onnx", "inputs": ["state"], "outputs": ["logits"]},
        },
        "weights_file": "weights.npz", "card_file": "MODEL_CARD.md",
        "training": {}, "metrics": {},
    }  # fmt: skip
    (package / "manifest.json").write_text(json.dumps(manifest))
    return package


def hand_probabilities(tokens: np.ndarray) -> np.ndarray:
    """numpy's answer after each token of the hand-made model: [T, K]."""
    w = {k: v.astype(np.float64) for k, v in hand_weights().items()}
    h, rows = np.zeros(HAND_HIDDEN), []
    for token in tokens:
        h = np.tanh(w["E"][token] + h @ w["R"])
        z = h @ w["W_y"]
        rows.append(np.exp(z - z.max()) / np.exp(z - z.max()).sum())
    return np.array(rows)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, dict[str, Any]]]:
    models = tmp_path_factory.mktemp("own-models")
    modules = trained_modules()
    for name, options in TOKEN_MODELS.items():
        package_torch(modules[name], models, name=name, **options)
    package_torch(modules[VECTOR], models, name=VECTOR, input_size=VECTOR_SIZE)
    write_hand_package(models)
    with ServerThread(server_config(models)) as server:
        channel = grpc.insecure_channel(server.address)
        yield rnnserve_pb2_grpc.RnnServeStub(channel), modules
        channel.close()


def inputs_for(name: str) -> np.ndarray:
    if name == "hand-made":
        return (np.arange(STEPS) * 7 % 5 + 1).astype(np.int64)
    return np.resize(IDS.numpy(), STEPS)


def expected_for(name: str, modules: dict[str, Any]) -> np.ndarray:
    tokens = inputs_for(name)
    if name == "hand-made":
        return hand_probabilities(tokens)
    return torch_probabilities(modules[name], torch.from_numpy(tokens))


ALL = [*TOKEN_MODELS, "hand-made"]


@pytest.mark.parametrize("name", ALL)
def test_served_step_by_step_equals_the_users_model(name: str, served: Any) -> None:
    stub, modules = served
    info = stub.GetModel(pb.GetModelRequest(name=name))
    assert info.cell == EXPECTED_CELLS.get(name, "custom")
    session = stub.CreateSession(pb.CreateSessionRequest(model=name)).session_id
    expected = expected_for(name, modules)
    for t, token in enumerate(inputs_for(name)):
        answer = stub.Step(
            pb.StepRequest(
                session_id=session,
                tokens=pb.TokenIds(ids=[int(token)]),
                top_k=1,
                return_distribution=True,
            )
        )
        np.testing.assert_allclose(
            answer.distribution, expected[t], atol=2e-5, err_msg=f"{name}, step {t}"
        )
        assert answer.top[0].id == int(np.argmax(expected[t])) or np.isclose(
            expected[t].max(), expected[t][answer.top[0].id], atol=2e-5
        )
    assert answer.steps == STEPS


def test_served_in_step_many_beside_other_sessions_equals_the_users_models(served: Any) -> None:
    """One StepMany message per step carries a session of every model and two more
    sessions of the tiny char model's neighbours (the other models' second sessions)."""
    stub, modules = served
    sessions = {
        name: stub.CreateSession(pb.CreateSessionRequest(model=name)).session_id
        for name in [*ALL, VECTOR]
    }
    others = [stub.CreateSession(pb.CreateSessionRequest(model="word-lstm")).session_id]
    expected = {name: expected_for(name, modules) for name in ALL}
    inputs = {name: inputs_for(name) for name in ALL}
    vectors = vector_inputs()
    expected_values = torch_values(modules[VECTOR], vectors)
    k = 3

    def messages() -> Iterator[pb.StepManyRequest]:
        for t in range(STEPS):
            yield pb.StepManyRequest(
                session_ids=[*sessions.values(), *others],
                tokens=[int(inputs[n][t]) for n in ALL] + [int(IDS[t % len(IDS)])],
                value_counts=[0] * len(ALL) + [VECTOR_SIZE] + [0] * len(others),
                vectors=vectors[t].tolist(),
                top_k=k,
            )

    vector_row = len(ALL)
    for t, answer in enumerate(stub.StepMany(messages())):
        assert not answer.errors, answer.errors
        for row, name in enumerate(ALL):
            top = np.array(answer.top_probabilities[row * k : (row + 1) * k])
            want = np.sort(expected[name][t])[::-1][:k]
            np.testing.assert_allclose(top, want, atol=2e-5, err_msg=f"{name}, step {t}")
            assert answer.steps[row] == t + 1
        assert answer.top_counts[vector_row] == 0 and answer.steps[vector_row] == t + 1
        assert list(answer.value_counts) == [0] * len(ALL) + [2] + [0] * len(others)
        np.testing.assert_allclose(answer.values, expected_values[t], atol=2e-5)


def test_the_float_vector_regressor_served_step_by_step_equals_torch(served: Any) -> None:
    stub, modules = served
    info = stub.GetModel(pb.GetModelRequest(name=VECTOR))
    assert (info.cell, info.input, info.input_size) == ("lstm", pb.INPUT_KIND_VECTORS, 4)
    assert (info.output, info.values, info.HasField("vocabulary")) == (
        pb.OUTPUT_KIND_REGRESSION,
        2,
        False,
    )
    assert [(p.name, p.rows) for p in info.state_parts] == [("h", 1), ("c", 1)]
    assert info.state_parts[0].bound == 1.0 and not info.state_parts[1].HasField("bound")
    session = stub.CreateSession(pb.CreateSessionRequest(model=VECTOR)).session_id
    vectors = vector_inputs()
    expected = torch_values(modules[VECTOR], vectors)
    for t, vector in enumerate(vectors):
        answer = stub.Step(
            pb.StepRequest(
                session_id=session, vectors=pb.FloatVectors(steps=1, values=vector.tolist())
            )
        )
        np.testing.assert_allclose(answer.values, expected[t], atol=2e-5, err_msg=f"step {t}")
        assert not answer.top and answer.steps == t + 1
    several = stub.CreateSession(pb.CreateSessionRequest(model=VECTOR)).session_id
    whole = stub.Step(
        pb.StepRequest(
            session_id=several, vectors=pb.FloatVectors(steps=STEPS, values=vectors.ravel())
        )
    )  # a whole sequence in one request: the output after its last vector
    np.testing.assert_allclose(whole.values, expected[-1], atol=2e-5)
    assert (whole.steps, whole.consumed) == (STEPS, STEPS)
