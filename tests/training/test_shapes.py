"""Each shape of docs/MODELS.md trains on its real data set (a slice, a few steps) and
exports a package that the server's runtime loads and runs the way its calls do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rnnserve_server.modelpackage import load_package
from rnnserve_server.runtime import ModelRuntime, ProviderChoice
from rnnserve_train.api import train_and_export
from rnnserve_train.config import make_config

SMALL = {
    "hidden_size": 16,
    "layers": 1,
    "max_steps": 4,
    "eval_every": 4,
    "batch_size": 16,
    "eval_batch_size": 256,
    "parity_steps": 10,
    "sample_chars": 8,
    "progress": False,
}


def build(preset: str, tmp_path: Path, **overrides: Any) -> tuple[Path, ModelRuntime]:
    config = make_config(
        preset,
        {**SMALL, "out": str(tmp_path / "models"), "runs": str(tmp_path / "runs"), **overrides},
    )
    path = train_and_export(config)
    assert path is not None
    package = load_package(path)
    runtime = ModelRuntime(package, ProviderChoice.resolve("cpu", allow_cpu_fallback=False))
    assert (path / "MODEL_CARD.md").read_text().startswith(f"# {config.name} v1")
    assert (Path(config.runs) / config.name / "loss.png").is_file()
    return path, runtime


def test_one_to_one_is_one_step_from_zeros(tmp_path: Path) -> None:
    path, runtime = build("one-step", tmp_path, max_documents=40, vocab_size=300, batch_size=64)
    manifest = load_package(path).manifest
    assert (manifest.shape, manifest.initial_state.kind, manifest.cell) == (
        "one-to-one",
        "zeros",
        "rnn-relu",
    )
    assert manifest.tokenizer.kind == "word" and manifest.tokenizer.size == 300
    assert {"test_perplexity", "test_bits_per_word", "test_bits_per_char"} <= set(manifest.metrics)
    assert not runtime.initial_state.any()
    logits, _ = runtime.step(np.array([5]), runtime.zeros(1))
    assert logits.shape == (1, 300)


def test_many_to_many_word_language_model(tmp_path: Path) -> None:
    path, runtime = build("word-gru", tmp_path, max_documents=40, vocab_size=500)
    manifest = load_package(path).manifest
    assert set(manifest.graphs) == {"step", "head", "sequence"}
    assert manifest.initial_state.token == "bos" and manifest.output.kind == "vocabulary"
    prompt = load_package(path).tokenizer.encode("In the beginning God created")
    logits, state = runtime.run_inputs(np.array(prompt), runtime.initial_state[:, None, :])
    stepped = runtime.initial_state[:, None, :]
    for token in prompt:
        step_logits, stepped = runtime.step(np.array([token]), stepped)
    np.testing.assert_allclose(state, stepped, atol=1e-5)
    np.testing.assert_allclose(logits, step_logits, atol=1e-4)


def test_many_to_one_classifier_has_labels_after_every_step(tmp_path: Path) -> None:
    path, runtime = build("name-language", tmp_path, max_documents=800)
    manifest = load_package(path).manifest
    assert manifest.shape == "many-to-one" and manifest.output.kind == "labels"
    assert len(manifest.output.labels) == 16 and "de_DE" in manifest.output.labels
    assert "test_accuracy" in manifest.metrics and "test_per_class" in manifest.training
    tokens = np.array(load_package(path).tokenizer.encode("Schmidt"))
    logits, _ = runtime.run_inputs(tokens, runtime.initial_state[:, None, :])
    assert logits.shape == (1, 16)


def test_sigmoid_classifier(tmp_path: Path) -> None:
    path, _ = build("name-language", tmp_path, max_documents=300, head="sigmoid", name="multi")
    assert load_package(path).manifest.output.kind == "sigmoid"


def test_one_to_many_generator_starts_from_its_condition(tmp_path: Path) -> None:
    path, runtime = build("name-generator", tmp_path, max_documents=800)
    manifest = load_package(path).manifest
    assert manifest.shape == "one-to-many" and "condition" in manifest.graphs
    assert manifest.initial_state.kind == "condition" and manifest.initial_state.token == "bos"
    assert manifest.conditions[0] == "cs_CZ" and len(manifest.conditions) == 16
    states = [runtime.condition(i) for i in range(3)]
    assert states[0].shape == (1, 16) and not np.allclose(states[0], states[1])


def test_seq2seq_translator_encodes_then_decodes(tmp_path: Path) -> None:
    path, runtime = build("dates", tmp_path, max_documents=400)
    package = load_package(path)
    manifest = package.manifest
    assert manifest.shape == "seq2seq" and "encoder" in manifest.graphs
    assert manifest.initial_state.kind == "encoder"
    assert {"test_exact_match", "test_bits_per_char"} <= set(manifest.metrics)
    source = np.array(package.tokenizer.encode("1 February 2003"))
    state = runtime.encode(source)
    assert state.shape == (1, 16)
    logits, _ = runtime.step(np.array([package.tokenizer.special_tokens["eos"]]), state[:, None])
    assert logits.shape == (1, package.tokenizer.size)


def test_a_shape_refuses_data_it_cannot_use() -> None:
    from rnnserve_train.config import ConfigError

    with pytest.raises(ConfigError, match="does not fit"):
        make_config("dates", {"data": "names"})
    with pytest.raises(ConfigError, match="sigmoid"):
        make_config("word-gru", {"head": "sigmoid"})
