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


NET = """
import torch
from torch import nn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(6, 8)
        self.rnn = nn.GRU(8, 12, batch_first=True)
        self.out = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.rnn(self.embedding(x))[0])


def factory() -> Net:
    return Net()
"""


def test_the_package_command_packages_a_factory_and_a_checkpoint(tmp_path: Path) -> None:
    """rnnserve-train package, as a user runs it: a file with a factory, a state_dict,
    a vocabulary file; the package computes what the module with those weights does."""
    import subprocess
    import sys

    (tmp_path / "net.py").write_text(NET)
    sys.path.insert(0, str(tmp_path))
    try:
        from net import factory  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(tmp_path))
    torch.manual_seed(5)
    module = factory()
    torch.save(module.state_dict(), tmp_path / "model.pt")
    (tmp_path / "vocab.txt").write_text("<unk>\na\nb\nc\nd\ne\n")
    command = [
        str(Path(sys.executable).with_name("rnnserve-train")), "package",
        f"--module={tmp_path / 'net.py'}:factory", f"--checkpoint={tmp_path / 'model.pt'}",
        "--name=net", "--vocabulary=vocab.txt", "--labels=x,y,z", "--tokenizer=char",
        f"--out={tmp_path / 'models'}", "--description=a GRU tagger",
    ]  # fmt: skip
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"package: {tmp_path / 'models' / 'net' / '1'}"
    package = load_package(tmp_path / "models" / "net" / "1")
    manifest = package.manifest
    assert (manifest.cell, manifest.output.labels, manifest.description) == (
        "gru-torch",
        ("x", "y", "z"),
        "a GRU tagger",
    )
    assert package.vocabulary.encode("abe") == [1, 2, 5]
    step = ort.InferenceSession(str(package.graph_path("step")), providers=["CPUExecutionProvider"])
    tokens = torch.tensor([[1, 2, 5, 3]])
    with torch.no_grad():
        expected = module(tokens)[0].numpy()
    state = np.zeros((1, 1, 12), np.float32)
    for t in range(4):
        logits, state = step.run(None, {"tokens": tokens[:, t].numpy(), "state": state})
        np.testing.assert_allclose(logits[0], expected[t], atol=1e-5)
    bad = subprocess.run(
        [*command[:2], "--module=net.py:missing", *command[3:]],
        cwd=tmp_path, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "net.py has no function missing()" in bad.stderr
