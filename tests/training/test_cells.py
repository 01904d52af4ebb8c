"""Every cell of docs/MODELS.md against an independent implementation:

* ``rnn-tanh``/``rnn-relu`` against PyTorch's ``nn.RNN`` (its two biases folded into b_a);
* ``gru-torch`` against PyTorch's ``nn.GRU``, ``lstm`` against ``nn.LSTM``;
* every cell against the numpy transcription of the equations (``reference.py``);
* every cell's exported graphs against its torch module (the export parity gate, which
  feeds the state back for 200 steps and runs the sequence graph on ragged prompts).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from rnnserve_server.manifest import InitialStateSpec, OutputSpec
from rnnserve_server.modelpackage import load_package
from rnnserve_server.tokenizer import Tokenizer
from rnnserve_train.config import make_config
from rnnserve_train.export import Layout, export_model
from rnnserve_train.model import CELLS, LSTMCell, RNNLanguageModel, TorchGRUCell, valid_mask
from rnnserve_train.reference import ReferenceModel

VOCAB = 19
ALL_CELLS = sorted(CELLS)


def random_model(
    cell: str, layers: int, hidden: int = 12, seed: int = 0, **kwargs: int
) -> RNNLanguageModel:
    """Parameters drawn at a scale where every gate works and float32 errors stay small
    (smaller for ReLU, whose unbounded state would grow)."""
    torch.manual_seed(seed)
    model = RNNLanguageModel(cell, VOCAB, hidden, layers, **kwargs)  # type: ignore[arg-type]
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.15 if cell == "rnn-relu" else 0.35)
    return model.eval()


def one_hot(tokens: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(tokens, VOCAB).float()


@pytest.mark.parametrize("cell", ["rnn-tanh", "rnn-relu"])
@pytest.mark.parametrize("layers", [1, 2])
def test_vanilla_rnn_equals_torch_rnn_with_biases_folded(cell: str, layers: int) -> None:
    torch.manual_seed(layers)
    reference = nn.RNN(
        VOCAB, 10, layers, nonlinearity=cell.removeprefix("rnn-"), batch_first=True
    ).eval()
    model = RNNLanguageModel(cell, VOCAB, 10, layers).eval()
    with torch.no_grad():
        for i, ours in enumerate(model.stack):
            ours.input_weight.copy_(getattr(reference, f"weight_ih_l{i}").T)
            ours.recurrent.copy_(getattr(reference, f"weight_hh_l{i}").T)
            b_ih, b_hh = getattr(reference, f"bias_ih_l{i}"), getattr(reference, f"bias_hh_l{i}")
            ours.bias.copy_(b_ih + b_hh)  # b_a = b_ih + b_hh
        tokens = torch.randint(0, VOCAB, (3, 15), generator=torch.Generator().manual_seed(2))
        state = torch.randn(layers, 3, 10) * 0.5
        expected, expected_state = reference(one_hot(tokens), state)
        top, _ = model.cells[0].scan(model.cells[0].project(tokens), state[0])
        _, full_state = model(tokens, state)
    if layers == 1:
        torch.testing.assert_close(top, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(full_state, expected_state, atol=1e-6, rtol=0)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("fused", [True, False])
def test_gru_torch_equals_torch_gru(layers: int, fused: bool) -> None:
    """Both paths of gru-torch: PyTorch's fused kernel over a chunk (used on CUDA), and
    step by step (the CPU path)."""
    torch.manual_seed(layers)
    reference = nn.GRU(VOCAB, 10, layers, batch_first=True).eval()
    model = RNNLanguageModel("gru-torch", VOCAB, 10, layers).eval()
    for i, cell in enumerate(model.stack):
        assert isinstance(cell, TorchGRUCell)
        cell.load_torch_gru(reference, i)
    tokens = torch.randint(0, VOCAB, (3, 15), generator=torch.Generator().manual_seed(2))
    state = torch.randn(layers, 3, 10) * 0.5
    with torch.no_grad():
        expected, expected_state = reference(one_hot(tokens), state)
        if fused:  # the CUDA path (cuDNN there), run here on the CPU
            inputs, states = tokens, []
            for i, cell in enumerate(model.stack):
                assert isinstance(cell, TorchGRUCell)
                inputs, last = cell.fused_scan(cell.project(inputs), state[i])
                states.append(last)
            got_state = torch.stack(states)
            torch.testing.assert_close(inputs, expected, atol=1e-6, rtol=0)
        else:
            got_state = state
            for t in range(tokens.shape[1]):
                _, got_state = model.step(tokens[:, t], got_state)
    torch.testing.assert_close(got_state, expected_state, atol=1e-6, rtol=0)
    assert torch.allclose(expected[:, -1], expected_state[-1])


@pytest.mark.parametrize("layers", [1, 2])
def test_lstm_equals_torch_lstm(layers: int) -> None:
    """The state [2L, B, H] is nn.LSTM's (h_n, c_n) stacked: h rows, then c rows."""
    torch.manual_seed(layers)
    reference = nn.LSTM(VOCAB, 10, layers, batch_first=True).eval()
    model = RNNLanguageModel("lstm", VOCAB, 10, layers).eval()
    for i, cell in enumerate(model.stack):
        assert isinstance(cell, LSTMCell)
        cell.load_torch_lstm(reference, i)
    tokens = torch.randint(0, VOCAB, (3, 15), generator=torch.Generator().manual_seed(2))
    h0, c0 = torch.randn(layers, 3, 10) * 0.5, torch.randn(layers, 3, 10)
    with torch.no_grad():
        expected, (h_n, c_n) = reference(one_hot(tokens), (h0, c0))
        state = torch.cat([h0, c0])
        for t in range(tokens.shape[1]):
            _, state = model.step(tokens[:, t], state)
        _, chunked = model(tokens, torch.cat([h0, c0]))
    torch.testing.assert_close(state, torch.cat([h_n, c_n]), atol=1e-6, rtol=0)
    torch.testing.assert_close(chunked, torch.cat([h_n, c_n]), atol=1e-6, rtol=0)
    assert torch.allclose(expected[:, -1], h_n[-1])


@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("layers", [1, 2])
def test_every_cell_equals_the_numpy_equations(cell: str, layers: int) -> None:
    model = random_model(cell, layers, seed=layers)
    reference = ReferenceModel(cell, model.to_seed_weights())
    rng = np.random.default_rng(layers)
    batch = 3
    state = model.zero_state(batch).numpy()
    ref_state = reference.zero_state(batch)
    for _ in range(40):
        tokens = rng.integers(0, VOCAB, batch)
        with torch.no_grad():
            logits, new = model.step(torch.from_numpy(tokens), torch.from_numpy(state))
        ref_logits, ref_state = reference.step(tokens, ref_state)
        state = new.numpy()
        np.testing.assert_allclose(logits.numpy(), ref_logits, atol=1e-5, rtol=0)
        np.testing.assert_allclose(state, ref_state, atol=1e-5, rtol=0)
    # The chunked forward (input products hoisted, fused where the cell has it) too.
    tokens = rng.integers(0, VOCAB, (batch, 20))
    lengths = np.array([20, 1, 9])
    with torch.no_grad():
        logits, seq_state = model.sequence(
            torch.from_numpy(tokens), torch.from_numpy(lengths), torch.from_numpy(state)
        )
    ref_logits, ref_seq_state = reference.sequence(tokens, lengths, ref_state)
    np.testing.assert_allclose(seq_state.numpy(), ref_seq_state, atol=1e-5, rtol=0)
    np.testing.assert_allclose(logits.numpy(), ref_logits, atol=1e-5, rtol=0)


def test_the_gru_forms_differ() -> None:
    """gru, gru-simple and gru-torch are different functions of the same-shaped weights."""
    tokens = torch.tensor([1, 2])
    state = torch.full((1, 2, 12), 0.3)
    outputs = {}
    for cell in ("gru", "gru-torch"):
        model = random_model(cell, 1, seed=5)
        with torch.no_grad():
            outputs[cell] = model.step(tokens, state)[1]
    assert not torch.allclose(outputs["gru"], outputs["gru-torch"], atol=1e-3)


def test_encoder_and_condition_equal_the_numpy_equations() -> None:
    model = random_model("gru", 2, encoder=True, conditions=3)
    reference = ReferenceModel("gru", model.to_seed_weights())
    tokens = np.random.default_rng(0).integers(0, VOCAB, (3, 11))
    lengths = np.array([11, 4, 1])
    with torch.no_grad():
        encoded = model.encode(torch.from_numpy(tokens), torch.from_numpy(lengths)).numpy()
        condition = model.condition_state(torch.tensor([2, 0])).numpy()
    np.testing.assert_allclose(encoded, reference.encode(tokens, lengths), atol=1e-6)
    np.testing.assert_allclose(condition, reference.condition(np.array([2, 0])), atol=1e-6)
    assert valid_mask(torch.tensor([2, 0]), 3).tolist() == [[True, True, False], [False] * 3]


def tokenizer() -> Tokenizer:
    return Tokenizer.build("char", ["abcdefghijklmno"])


@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("form", ["native", "scan"])
def test_every_cells_graphs_equal_its_torch_module(cell: str, form: str, tmp_path: Path) -> None:
    """The export parity gate: numpy == torch == onnxruntime to 1e-5, state fed back for
    200 steps, then ragged prompts through the sequence graph (native ONNX RNN/GRU
    operators, or a Scan of primitives)."""
    vocabulary = tokenizer()
    torch.manual_seed(1)
    model = RNNLanguageModel(cell, vocabulary.size, 16, 2)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.15 if cell == "rnn-relu" else 0.3)
    config = make_config(
        "tiny", {"name": f"x-{cell}", "cell": cell, "sequence_graph": form, "sample_chars": 5}
    )
    path = export_model(model, vocabulary, config, training={}, metrics={}, out=tmp_path)
    manifest = load_package(path).manifest
    assert set(manifest.graphs) == {"step", "head", "sequence"}
    parity = manifest.training["parity"]
    assert parity["steps"] == 200 and "sequence" in parity["graphs"]
    assert parity["max_abs_diff"]["torch"] <= 1e-5  # states
    assert parity["max_abs_diff"]["onnxruntime"] <= 1e-5
    # The gates blend states with Sub, Mul, Add: no per-element branch (``Where``, as
    # torch.lerp exports) in the graph every step runs.
    ops = {node.op_type for node in onnx.load(str(path / "step.onnx")).graph.node}
    assert "Where" not in ops, sorted(ops)


@pytest.mark.parametrize("cell", ALL_CELLS)
@pytest.mark.parametrize("form", ["native", "scan"])
def test_a_tied_embedding_model_exports_and_equals_its_seed_weights(
    cell: str, form: str, tmp_path: Path
) -> None:
    """With an embedding E shared by the encoder and decoder and W_ya = E: the parity gate
    passes (numpy reads W_ex = E^T), weights.bin holds E once, and the package's seed
    weights are the model's."""
    from rnnserve_train.export import package_seed_weights
    from rnnserve_train.sharing import read_parameters

    vocabulary = tokenizer()
    torch.manual_seed(2)
    model = RNNLanguageModel(
        cell, vocabulary.size, 16, 2, encoder=True, embedding_size=16, tie_embeddings=True
    )
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.15 if cell == "rnn-relu" else 0.3)
    layout = Layout(
        shape="seq2seq",
        output=OutputSpec(kind="vocabulary"),
        initial_state=InitialStateSpec(kind="encoder", token="bos"),
    )
    config = make_config(
        "tiny", {"name": f"tied-{cell}", "cell": cell, "sequence_graph": form, "parity_steps": 50}
    )
    path = export_model(
        model, vocabulary, config, training={}, metrics={}, out=tmp_path, layout=layout
    )
    manifest = load_package(path).manifest
    stored = read_parameters(path / graph.file for graph in manifest.graphs.values())
    assert "embedding.weight" in stored and "output.weight" not in stored
    expected = model.to_seed_weights()
    derived = package_seed_weights(path)
    assert set(derived) == set(expected)
    for key, value in expected.items():
        np.testing.assert_allclose(derived[key], value, atol=1e-7, err_msg=key)
    np.testing.assert_array_equal(derived["W_ya"], stored["embedding.weight"])
    np.testing.assert_array_equal(derived["W_ex"], stored["embedding.weight"].T)


def test_a_sigmoid_head_exports_and_serves(tmp_path: Path) -> None:
    from rnnserve_server.runtime import ModelRuntime, ProviderChoice

    vocabulary = tokenizer()
    torch.manual_seed(0)
    model = RNNLanguageModel("rnn-tanh", vocabulary.size, 12, 1, output_size=3).eval()
    layout = Layout(
        shape="many-to-one",
        output=OutputSpec(kind="sigmoid", labels=("x", "y", "z")),
        initial_state=InitialStateSpec(kind="zeros"),
    )
    config = make_config("tiny", {"name": "sigmoid", "cell": "rnn-tanh", "parity_steps": 20})
    path = export_model(
        model, vocabulary, config, training={}, metrics={}, out=tmp_path, layout=layout
    )
    package = load_package(path)
    assert package.manifest.output.kind == "sigmoid"
    runtime = ModelRuntime(package, ProviderChoice.resolve("cpu", allow_cpu_fallback=False))
    logits, _ = runtime.run_inputs(np.array([4, 5, 6]), runtime.zeros(1))
    with torch.no_grad():
        expected, _ = model.sequence(
            torch.tensor([[4, 5, 6]]), torch.tensor([3]), model.zero_state(1)
        )
    np.testing.assert_allclose(logits, expected.numpy(), atol=1e-5)
