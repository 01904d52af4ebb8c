"""The vocabulary and tokenizer shared by training and the server."""

import re
import unicodedata
from pathlib import Path

import pytest

from rnnserve_server.tokenizer import UNKNOWN_TEXT, TokenizeError, Tokenizer, TokenizerRules

CORPUS = ["the cat sat", "the dog ran", "a cat ran"]


def test_special_tokens_come_first_then_by_frequency() -> None:
    tok = Tokenizer.build("char", CORPUS)
    assert tok.tokens[:4] == ("<pad>", "<unk>", "<s>", "</s>")
    assert tok.special_tokens == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    counts = {c: "".join(CORPUS).count(c) for c in set("".join(CORPUS))}
    ordinary = tok.tokens[4:]
    assert [counts[c] for c in ordinary] == sorted(counts.values(), reverse=True)


def test_char_round_trip_and_unknown() -> None:
    tok = Tokenizer.build("char", CORPUS)
    assert tok.decode(tok.encode("the cat")) == "the cat"
    ids = tok.encode("cat!")
    assert ids[-1] == tok.special_tokens["unk"]
    assert tok.decode(ids) == "cat" + UNKNOWN_TEXT


def test_no_unknown_token_rejects_unseen_text() -> None:
    tok = Tokenizer(kind="char", tokens=("a", "b"))
    with pytest.raises(TokenizeError, match=r"text\[1\] = 'z'"):
        tok.encode("az")


def test_special_token_text_is_never_produced_by_encoding() -> None:
    tok = Tokenizer.build("char", ["<s>"])  # the characters, not the token
    assert tok.encode("<s>") != [tok.special_tokens["bos"]]
    assert tok.decode(tok.encode("<s>")) == "<s>"


def test_word_tokenizer_lowercase_and_spacing() -> None:
    tok = Tokenizer.build("word", ["Hello, world!", "hello again"], lowercase=True)
    ids = tok.encode("HELLO world")
    assert [tok.token_text(i) for i in ids] == ["hello", "world"]
    assert tok.decode(ids) == "hello world"
    pieces = [tok.piece(i, first=n == 0) for n, i in enumerate(ids)]
    assert "".join(pieces) == tok.decode(ids)


def test_max_size_and_min_count() -> None:
    tok = Tokenizer.build("char", ["aaab"], max_size=5)
    assert tok.tokens == ("<pad>", "<unk>", "<s>", "</s>", "a")
    tok = Tokenizer.build("char", ["aaab"], min_count=2)
    assert "b" not in tok.tokens


def test_save_and_load(tmp_path: Path) -> None:
    tok = Tokenizer.build("char", [*CORPUS, "naïve ☃"])
    tok.save(tmp_path / "vocab.json")
    assert Tokenizer.load_tokens(tmp_path / "vocab.json") == tok.tokens


def test_rejects_inconsistent_vocabularies() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        Tokenizer(kind="char", tokens=("a", "a"))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        Tokenizer(kind="char", tokens=("a",), special_tokens={"eos": 3})
    with pytest.raises(ValueError, match="kind"):
        Tokenizer(kind="bytes", tokens=("a",))


@pytest.mark.parametrize(
    "text",
    [
        "the LORD, a city, and the land.",
        "Why? Because: he said; so! 50% of it…",
        "they said “no” and went [home] (at last)",
    ],
)
def test_word_decoding_puts_no_space_before_attached_punctuation(text: str) -> None:
    tok = Tokenizer.build("word", [text])
    ids = tok.encode(text)
    decoded = tok.decode(ids)
    # Each attached mark follows its word directly; every other token is spaced.
    expected = (
        text.replace("“", "“ ").replace("[", "[ ").replace("(", "( ")
    )  # opening marks keep their space: a piece depends on its own token alone
    assert decoded == expected
    pieces = [tok.piece(i, first=n == 0) for n, i in enumerate(ids)]
    assert "".join(pieces) == decoded


def test_an_unencodable_piece_is_named_by_its_code_point_offset() -> None:
    """Offsets count code points of the normalised text (what GetVocabulary states)."""
    words = Tokenizer(kind="word", tokens=("the", "cat", "."), lowercase=True)
    with pytest.raises(TokenizeError, match=r"text\[8\] = 'dog' is not in the vocabulary"):
        words.encode("The cat dog.")
    chars = Tokenizer(kind="char", tokens=("a", "é"), normalize="NFC")
    with pytest.raises(TokenizeError, match=r"text\[2\] = 'b'.*code points of the normalised"):
        chars.encode("ae\u0301b")  # e + combining acute: one code point after NFC


def test_the_rules_state_how_to_encode_and_decode() -> None:
    words = Tokenizer(kind="word", tokens=("<unk>", "the", "cat"), special_tokens={"unk": 0})
    rules = words.rules()
    assert (rules.kind, rules.separator, rules.unknown_text) == ("word", " ", UNKNOWN_TEXT)
    assert re.findall(rules.word_pattern, "the cat's, hat") == words.split("the cat's, hat")
    chars = Tokenizer(kind="char", tokens=("a",)).rules()
    assert (chars.word_pattern, chars.separator) == ("", "")


def decode_by_rules(rules: TokenizerRules, tokens: tuple[str, ...], ids: list[int]) -> str:
    """Decoding as the proto's TokenizerRules states it, from the rules alone (no
    special tokens among ``ids``)."""
    out = ""
    for token in (tokens[i] for i in ids):
        attached = token in rules.attached or (
            len(token) == 1 and unicodedata.category(token) in rules.attached_categories
        )
        out += token if not out or attached else rules.separator + token
    return out


@pytest.mark.parametrize(
    "text", ["the LORD, a city, and the land.", "they said “no” (at last)! 50% of it… [so]"]
)
def test_the_rules_state_the_punctuation_that_attaches(text: str) -> None:
    tok = Tokenizer.build("word", [text])
    ids = tok.encode(text)
    assert decode_by_rules(tok.rules(), tok.tokens, ids) == tok.decode(ids)
