"""The tiny model end to end, and the parity gate that guards every export."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import Tensor

from rnnserve_server.modelpackage import load_package
from rnnserve_server.tokenizer import Tokenizer
from rnnserve_train.api import greedy_tokens, load_checkpoint, make_config
from rnnserve_train.cli import main
from rnnserve_train.config import ConfigError, TrainConfig
from rnnserve_train.export import export_model
from rnnserve_train.model import GRUCell, RNNLanguageModel, blend
from rnnserve_train.parity import ParityError
from rnnserve_train.train import train


def test_tiny_package_loads_and_beats_the_uniform_baseline(tiny_package: Path) -> None:
    package = load_package(tiny_package)
    manifest = package.manifest
    assert (manifest.shape, manifest.cell, manifest.output.kind) == (
        "many-to-many",
        "gru",
        "vocabulary",
    )
    assert (manifest.initial_state.kind, manifest.initial_state.token) == ("after_token", "bos")
    uniform = math.log2(package.tokenizer.size)
    assert manifest.metrics["test_bits_per_char"] < uniform - 1.0
    assert "BSD" in manifest.training["data_licence"]
    assert manifest.training["parity"]["max_abs_diff"]["onnxruntime"] <= 1e-5
    for name in ("step.onnx", "head.onnx", "weights.bin", "vocab.json", "MODEL_CARD.md"):
        assert (tiny_package / name).is_file()


def test_a_package_holds_each_weight_once(tiny_package: Path, tiny_checkpoint: Path) -> None:
    """weights.bin holds every parameter once (and nothing else but alignment); no graph
    keeps a tensor of its own beyond small constants; every graph that uses a parameter
    reads the same bytes of weights.bin."""
    model, _, _ = load_checkpoint(tiny_checkpoint)
    parameter_bytes = sum(p.numel() * 4 for p in model.parameters())
    size = (tiny_package / "weights.bin").stat().st_size
    assert parameter_bytes <= size < parameter_bytes + 64 * len(list(model.parameters()))
    where: dict[str, set[tuple[str, str]]] = {}
    for graph_file in ("step.onnx", "head.onnx", "sequence.onnx"):
        graph = onnx.load(str(tiny_package / graph_file), load_external_data=False).graph
        for tensor in graph.initializer:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                info = {e.key: e.value for e in tensor.external_data}
                assert info["location"] == "weights.bin"
                where.setdefault(tensor.name, set()).add((info["offset"], info["length"]))
            else:
                assert len(tensor.raw_data) <= 1024, (graph_file, tensor.name)
    assert set(where) == {name for name, _ in model.named_parameters()}
    assert all(len(places) == 1 for places in where.values()), where


def test_seed_weights_are_derived_from_the_package(
    tiny_package: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """``rnnserve-train seed-weights`` writes the weights in the notation of MODELS.md,
    rebuilt from weights.bin: those of the trained model."""
    model, tokenizer, _ = load_checkpoint(tiny_checkpoint)
    out = tmp_path / "seed.npz"
    assert main(["seed-weights", f"--package={tiny_package}", f"--out={out}"]) == 0
    expected = model.to_seed_weights()
    with np.load(out) as weights:
        assert set(weights.files) == set(expected)
        for key, value in expected.items():
            np.testing.assert_array_equal(weights[key], value, err_msg=key)
        H, V = model.hidden_size, tokenizer.size
        assert weights["layer1.W_r"].shape == (H, H + V)
        assert weights["W_ya"].shape == (V, H)


def test_graphs_have_a_dynamic_batch_and_static_other_dims(tiny_package: Path) -> None:
    manifest = load_package(tiny_package).manifest
    L, H, K = manifest.layers, manifest.hidden_size, manifest.tokenizer.size
    graph = onnx.load(str(tiny_package / "step.onnx")).graph
    shapes = {
        v.name: [d.dim_value or d.dim_param for d in v.type.tensor_type.shape.dim]
        for v in [*graph.input, *graph.output]
    }
    assert shapes == {
        "tokens": ["batch"],
        "state": [L, "batch", H],
        "logits": ["batch", K],
        "state_out": [L, "batch", H],
    }


def test_run_records_metrics_and_plot(tiny_checkpoint: Path) -> None:
    run = tiny_checkpoint.parent
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["final"] and "test_bits_per_char" in lines[-1]
    assert (run / "loss.png").stat().st_size > 1000


def test_served_graph_greedy_matches_torch_greedy(
    tiny_package: Path, tiny_checkpoint: Path
) -> None:
    """The golden check in miniature: 200 greedy tokens from the checkpoint's torch model
    and from the package's graphs on onnxruntime, each feeding back its own tokens."""
    model, tokenizer, _ = load_checkpoint(tiny_checkpoint)
    prompt = tokenizer.encode("Q: ")
    expected = greedy_tokens(model, tokenizer, prompt, 200)

    step = ort.InferenceSession(str(tiny_package / "step.onnx"), providers=["CPUExecutionProvider"])
    head = ort.InferenceSession(str(tiny_package / "head.onnx"), providers=["CPUExecutionProvider"])
    bos = tokenizer.special_tokens["bos"]
    state = np.zeros((model.layers, 1, model.hidden_size), dtype=np.float32)
    _, state = step.run(None, {"tokens": np.array([bos]), "state": state})
    (logits,) = head.run(None, {"state": state})
    for token in prompt:
        logits, state = step.run(None, {"tokens": np.array([token]), "state": state})
    served: list[int] = []
    while len(served) < 200:
        served.append(int(np.argmax(logits[0])))
        logits, state = step.run(None, {"tokens": np.array(served[-1:]), "state": state})
    assert served == expected


def test_export_only_from_a_checkpoint(tiny_checkpoint: Path, tmp_path: Path) -> None:
    assert main(["export", f"--checkpoint={tiny_checkpoint}", f"--out={tmp_path}"]) == 0
    first = tmp_path / "char-gru-tiny" / "1"
    assert load_package(first).manifest.version == 1
    model, tokenizer, config = load_checkpoint(tiny_checkpoint)
    second = export_model(model, tokenizer, config, training={}, metrics={}, out=tmp_path)
    assert second == tmp_path / "char-gru-tiny" / "2"  # the next free version
    with pytest.raises(FileExistsError):
        export_model(model, tokenizer, config, training={}, metrics={}, out=tmp_path, version=2)


def test_training_is_deterministic(tmp_path: Path) -> None:
    config = make_config(
        "tiny",
        {"max_documents": 150, "max_steps": 4, "eval_every": 4, "progress": False},
    )
    results = [train(config.replace(runs=str(tmp_path / f"run{i}"))) for i in range(2)]
    models = [load_checkpoint(r.checkpoint)[0].state_dict() for r in results]
    for name, tensor in models[0].items():
        assert torch.equal(tensor, models[1][name]), name
    assert results[0].metrics == results[1].metrics


# ---------------------------------------------------------------------- the parity gate


class TorchStyleGRUCell(GRUCell):
    """PyTorch nn.GRU's variant: the reset gate multiplies *after* the recurrent product.
    Exported under the name ``gru`` it must be refused."""

    def step(self, projected: Tensor, state: Tensor) -> Tensor:
        H = self.hidden_size
        gates_ru = torch.sigmoid(torch.addmm(projected[:, : 2 * H], state, self.recurrent_ru))
        relevance, update = gates_ru[:, :H], gates_ru[:, H:]
        candidate = torch.tanh(projected[:, 2 * H :] + relevance * (state @ self.recurrent_c))
        return blend(state, candidate, update)


class SkewedWeightsModel(RNNLanguageModel):
    """Writes seed weights that are off by 1e-3 in one element."""

    def to_seed_weights(self) -> dict[str, np.ndarray]:
        weights = super().to_seed_weights()
        weights["layer1.W_u"][0, 0] += 1e-3
        return weights


def small_model(
    tokenizer: Tokenizer, cls: type[RNNLanguageModel] = RNNLanguageModel
) -> RNNLanguageModel:
    torch.manual_seed(3)
    model = cls("gru", tokenizer.size, 16, 2)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.3)
    return model


def small_config(tmp_path: Path) -> TrainConfig:
    return make_config("tiny", {"name": "parity", "out": str(tmp_path / "models")})


def test_parity_gate_passes_a_faithful_model(small_tokenizer: Tokenizer, tmp_path: Path) -> None:
    config = small_config(tmp_path)
    path = export_model(
        small_model(small_tokenizer), small_tokenizer, config, training={}, metrics={}
    )
    assert path == tmp_path / "models" / "parity" / "1"


def test_parity_gate_refuses_the_pytorch_gru_variant(
    small_tokenizer: Tokenizer, tmp_path: Path
) -> None:
    model = small_model(small_tokenizer)
    for layer, cell in enumerate(model.cells):
        variant = TorchStyleGRUCell(cell.input_size, cell.hidden_size, embed=cell.embed)
        variant.load_state_dict(cell.state_dict())
        model.cells[layer] = variant
    config = small_config(tmp_path)
    with pytest.raises(ParityError, match="torch and the numpy reference"):
        export_model(model, small_tokenizer, config, training={}, metrics={})
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").rglob("*"))


def test_parity_gate_refuses_weights_that_do_not_match_the_graph(
    small_tokenizer: Tokenizer, tmp_path: Path
) -> None:
    model = small_model(small_tokenizer, SkewedWeightsModel)
    config = small_config(tmp_path)
    (tmp_path / "models" / "parity").mkdir(parents=True)
    with pytest.raises(ParityError, match="numpy reference"):
        export_model(model, small_tokenizer, config, training={}, metrics={})
    assert list((tmp_path / "models" / "parity").iterdir()) == []


def test_resume_continues_a_run_and_refuses_another_model(tmp_path: Path) -> None:
    config = make_config(
        "tiny",
        {
            "max_documents": 150,
            "max_steps": 3,
            "eval_every": 3,
            "progress": False,
            "runs": str(tmp_path),
        },
    )
    first = train(config)
    resumed = train(config.replace(max_steps=5, resume=True))
    assert resumed.checkpoint == first.checkpoint
    from rnnserve_train.checkpoint import load_checkpoint as load_full

    assert load_full(resumed.checkpoint).step == 5
    lines = (tmp_path / config.name / "metrics.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in lines]
    assert [e["step"] for e in entries if "step_bits" in e] == [1, 2, 3, 4, 5]
    assert [e["step"] for e in entries if "step_bits" not in e] == [3, 3, 5, 5]
    with pytest.raises(ConfigError, match="hidden_size"):
        train(config.replace(hidden_size=8, resume=True))
