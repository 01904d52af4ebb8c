"""Vocabularies: word tokens with special tokens and frequency cut-offs, and sizes from
10k (the word models' default) to 1M, whose model still trains and exports here."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from rnnserve_server.modelpackage import load_package
from rnnserve_server.tokenizer import Tokenizer
from rnnserve_train.config import PRESETS, make_config
from rnnserve_train.data import build_tokenizer
from rnnserve_train.export import export_model
from rnnserve_train.model import RNNLanguageModel
from rnnserve_train.reference import one_hot
from rnnserve_train.tasks import LanguageModel


def test_word_vocabulary_has_specials_and_frequency_cut_offs() -> None:
    texts = ["the cat sat on the mat.", "The dog sat; the cat ran!", "a rare word"]
    tokenizer = build_tokenizer(texts, min_count=2, kind="word", lowercase=True)
    assert tokenizer.tokens[:4] == ("<pad>", "<unk>", "<s>", "</s>")
    assert tokenizer.tokens[4:] == ("the", "cat", "sat")  # by count, then alphabetically
    unk = tokenizer.special_tokens["unk"]
    assert tokenizer.encode("The cat ran") == [4, 5, unk]
    capped = build_tokenizer(texts, min_count=1, kind="word", max_size=6)
    assert capped.size == 6 and capped.tokens[4:] == ("the", "cat")  # case kept: The apart


def test_the_word_models_default_to_10k_words() -> None:
    assert PRESETS["word-gru"]["vocab_size"] == 10_000
    assert PRESETS["one-step"]["vocab_size"] == 10_000


def test_100k_word_vocabulary_builds() -> None:
    words = [f"w{i}" for i in range(120_000)]
    frequent = " ".join(words[:99_996])  # seen twice; the other 20,004 once
    text = f"{frequent} {frequent} {' '.join(words[99_996:])}"
    tokenizer = build_tokenizer([text], min_count=1, kind="word", max_size=100_000)
    assert tokenizer.size == 100_000
    assert tokenizer.encode("w5 w119999") == [tokenizer.tokens.index("w5"), 1]


def test_embedding_lookup_equals_one_hot_product_for_a_large_vocabulary() -> None:
    """W_ax x<t> for a one-hot x<t> is the gathered row used in the hot path."""
    vocab = 50_000
    torch.manual_seed(0)
    model = RNNLanguageModel("gru", vocab, 4, 1)
    weights = model.to_seed_weights()
    tokens = torch.tensor([0, 7, 31_337, vocab - 1])
    with torch.no_grad():
        gathered = model.stack[0].project(tokens).numpy()
    for g, gate in enumerate(model.stack[0].gates):
        W_ax, b = weights[f"layer1.W_{gate}"][:, 4:], weights[f"layer1.b_{gate}"]
        for row, token in enumerate(tokens.tolist()):
            expected = W_ax @ one_hot(token, vocab) + b
            np.testing.assert_allclose(gathered[row, g * 4 : (g + 1) * 4], expected, atol=1e-6)


def test_a_million_word_model_trains_and_exports(tmp_path: Path) -> None:
    """1M tokens: the vocabulary builds, a training step runs, and the package (step,
    head and sequence graphs, parity-checked) exports and loads, in this machine's memory."""
    started = time.perf_counter()
    words = [f"w{i}" for i in range(1_000_000)]
    tokenizer = Tokenizer.build("word", [" ".join(words)], max_size=1_000_000)
    assert tokenizer.size == 1_000_000
    config = make_config(
        "tiny",
        {"name": "million", "tokenizer": "word", "hidden_size": 2, "parity_steps": 2,
         "sample_chars": 3, "seq_len": 4, "batch_size": 2},
    )  # fmt: skip
    torch.manual_seed(0)
    model = RNNLanguageModel("gru", tokenizer.size, 2, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    task = LanguageModel.__new__(LanguageModel)  # loss() needs no data
    task.config = config
    tokens = torch.tensor([[2, 10, 999_999, 5, 77]] * 2)
    batch = {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "loss_mask": torch.ones(2, 4),
        "keep": torch.ones(2, 4),
    }
    loss = task.loss(model, batch, None)
    (loss.nats / loss.count).backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    path = export_model(model, tokenizer, config, training={}, metrics={}, out=tmp_path)
    package = load_package(path)
    assert package.manifest.tokenizer.size == 1_000_000
    assert set(package.manifest.graphs) == {"step", "head", "sequence"}
    assert time.perf_counter() - started < 120
