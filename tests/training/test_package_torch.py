"""package_torch's gate and what it refuses: a module whose export would differ, a
bidirectional one, and inputs that do not fit; a float-vector LSTM regressor packaged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from own_models import VOCABULARY, BidirectionalGRU, BrokenLSTM, WordLSTM, trained_modules

from rnnserve_server.modelpackage import load_package
from rnnserve_train import package_torch
from rnnserve_train.package import PackagingError, UnsupportedModule


def test_a_module_whose_export_differs_is_refused_naming_the_step(tmp_path: Path) -> None:
    torch.manual_seed(0)
    with pytest.raises(PackagingError) as refused:
        package_torch(BrokenLSTM(), tmp_path, name="broken", vocabulary=VOCABULARY)
    message = str(refused.value)
    assert "BrokenLSTM.forward differ by" in message and "at step 0" in message
    difference = float(message.split("differ by ")[1].split(maxsplit=1)[0])
    assert difference > 1e-3
    assert not (tmp_path / "broken").exists()  # nothing published, nothing left


def test_a_bidirectional_module_is_refused_saying_why(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModule, match=r"BidirectionalGRU\.gru is bidirectional: .*"):
        package_torch(BidirectionalGRU(), tmp_path, name="bi", vocabulary=VOCABULARY)


def test_inputs_must_fit_the_module(tmp_path: Path) -> None:
    with pytest.raises(PackagingError, match="exactly one"):
        package_torch(WordLSTM(), tmp_path, name="x")
    with pytest.raises(PackagingError, match=r"give vocabulary=, not input_size="):
        package_torch(WordLSTM(), tmp_path, name="x", input_size=3)
    outputs = len(VOCABULARY)
    with pytest.raises(
        PackagingError, match=rf"needs labels= naming the module's {outputs} outputs"
    ):
        package_torch(WordLSTM(), tmp_path, name="x", vocabulary=VOCABULARY, output="labels")


def test_a_float_vector_lstm_regressor_is_packaged_and_its_graph_follows_torch(
    tmp_path: Path,
) -> None:
    module = trained_modules("vector-lstm")["vector-lstm"]
    path = package_torch(module, tmp_path, name="vector-lstm", input_size=4)
    manifest = load_package(path).manifest
    assert (manifest.cell, manifest.input.kind, manifest.input.size) == ("lstm", "vectors", 4)
    assert (manifest.output.kind, manifest.output.values) == ("regression", 2)
    assert manifest.state_shape == (2, 16) and manifest.tokenizer is None
    assert json.loads((path / "manifest.json").read_text())["graphs"]["step"]["outputs"] == [
        "values",
        "state_out",
    ]
    x = torch.randn(1, 50, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = module(x)[0].numpy()
    step = ort.InferenceSession(str(path / "step.onnx"), providers=["CPUExecutionProvider"])
    state = np.zeros((2, 1, 16), np.float32)
    for t in range(50):
        values, state = step.run(None, {"inputs": x[:, t].numpy(), "state": state})
        np.testing.assert_allclose(values[0], expected[t], atol=1e-5)
