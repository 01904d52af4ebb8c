"""Vocabularies and tokenizers shared by training (which writes them) and the server.

A vocabulary is an ordered list of tokens; a token's id is its index. Special tokens
(padding, unknown, begin, end) are ordinary entries whose roles the manifest names.
Two kinds exist:

* ``char``: one token per Unicode code point (after the configured normalisation);
* ``word``: words and single punctuation marks, split by a fixed regular expression;
  decoded text joins tokens with single spaces, except that no space goes before a mark
  that attaches to the text before it (``. , ; : ! ? % …``, closing brackets and closing
  quotes): ``the LORD, a city.``. Opening marks keep their spaces (``( a city)``): a
  token's text depends on that token alone, so streamed pieces add up to ``decode``.

Never materialise one-hot vectors: an id *is* the column of ``W_ax`` to gather.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SPECIAL_ROLES = ("pad", "unk", "bos", "eos")
DEFAULT_SPECIAL_TEXT = {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>"}
TOKENIZER_KINDS = ("char", "word")
UNKNOWN_TEXT = "\ufffd"
NORMALIZATIONS = ("NFC", "NFKC", "none")
_WORD_PATTERN = re.compile(r"\w+(?:'\w+)*|[^\w\s]", re.UNICODE)
_ATTACHED_MARKS = frozenset(".,;:!?%…")
_ATTACHED_CATEGORIES = ("Pe", "Pf")  # closing brackets, closing quotes


def _attaches(token: str) -> bool:
    """A punctuation token written right after the text before it, without a space."""
    return len(token) == 1 and (
        token in _ATTACHED_MARKS or unicodedata.category(token) in _ATTACHED_CATEGORIES
    )


# How offsets into a text count, in messages (TokenizeError) and in GetVocabulary.
OFFSETS = "code points of the normalised text"


class TokenizeError(ValueError):
    """Text that the vocabulary cannot represent (no unknown token to fall back on)."""


@dataclass(frozen=True)
class TokenizerRules:
    """Everything a client needs to encode and decode exactly as ``Tokenizer`` does
    (GetVocabulary; the proto's TokenizerRules says how they combine)."""

    kind: str
    normalization: str
    lowercase: bool
    word_pattern: str  # "" for char
    offsets: str
    separator: str
    unknown_text: str
    attached: tuple[str, ...]  # word tokens written without the separator before them
    attached_categories: tuple[str, ...]  # ... and those of these Unicode categories


@dataclass(frozen=True)
class Tokenizer:
    """Maps text to token ids and back for one vocabulary."""

    kind: str
    tokens: tuple[str, ...]
    special_tokens: dict[str, int] = field(default_factory=dict)
    normalize: str = "NFC"
    lowercase: bool = False
    _index: dict[str, int] = field(init=False, repr=False, compare=False)
    _special_ids: frozenset[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in TOKENIZER_KINDS:
            raise ValueError(f"tokenizer kind {self.kind!r} is not one of {TOKENIZER_KINDS}")
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize {self.normalize!r} is not one of {NORMALIZATIONS}")
        if len(set(self.tokens)) != len(self.tokens):
            raise ValueError("vocabulary has duplicate tokens")
        for role, token_id in self.special_tokens.items():
            if role not in SPECIAL_ROLES:
                raise ValueError(f"special token role {role!r} is not one of {SPECIAL_ROLES}")
            if not 0 <= token_id < len(self.tokens):
                raise ValueError(
                    f"special token {role}={token_id} is outside the vocabulary "
                    f"(0..{len(self.tokens) - 1})"
                )
        object.__setattr__(self, "_index", {t: i for i, t in enumerate(self.tokens)})
        object.__setattr__(self, "_special_ids", frozenset(self.special_tokens.values()))

    # ------------------------------------------------------------------ building

    @classmethod
    def build(
        cls,
        kind: str,
        texts: Iterable[str],
        *,
        max_size: int | None = None,
        min_count: int = 1,
        normalize: str = "NFC",
        lowercase: bool = False,
    ) -> Tokenizer:
        """Build a vocabulary from a corpus: special tokens first, then by frequency.

        Ties are broken by the token itself so the result does not depend on dict order.
        ``max_size`` counts the special tokens too.
        """
        probe = cls(kind=kind, tokens=(), normalize=normalize, lowercase=lowercase)
        counts: dict[str, int] = {}
        for text in texts:
            for piece in probe.split(text):
                counts[piece] = counts.get(piece, 0) + 1
        specials = [DEFAULT_SPECIAL_TEXT[role] for role in SPECIAL_ROLES]
        ranked = sorted(
            (t for t, c in counts.items() if c >= min_count and t not in specials),
            key=lambda t: (-counts[t], t),
        )
        if max_size is not None:
            ranked = ranked[: max(0, max_size - len(specials))]
        return cls(
            kind=kind,
            tokens=tuple(specials + ranked),
            special_tokens={role: i for i, role in enumerate(SPECIAL_ROLES)},
            normalize=normalize,
            lowercase=lowercase,
        )

    # ------------------------------------------------------------------ text <-> ids

    @property
    def size(self) -> int:
        return len(self.tokens)

    def normalized(self, text: str) -> str:
        if self.normalize != "none":
            text = unicodedata.normalize(self.normalize, text)  # type: ignore[arg-type]
        return text.lower() if self.lowercase else text

    def split(self, text: str) -> list[str]:
        """The token strings of ``text`` (before lookup)."""
        return [piece for _, piece in self._pieces(text)]

    def _pieces(self, text: str) -> list[tuple[int, str]]:
        """``split``, each piece with its offset (OFFSETS)."""
        text = self.normalized(text)
        if self.kind == "char":
            return list(enumerate(text))
        return [(match.start(), match.group()) for match in _WORD_PATTERN.finditer(text)]

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; unknown pieces map to ``unk`` or raise TokenizeError."""
        index = self._index
        unk = self.special_tokens.get("unk")
        ids: list[int] = []
        for offset, piece in self._pieces(text):
            token_id = index.get(piece)
            if token_id is None or token_id in self._special_ids:
                if unk is None:
                    raise TokenizeError(
                        f"text[{offset}] = {piece!r} is not in the vocabulary and the model "
                        f"has no unknown token (offsets count {OFFSETS})"
                    )
                token_id = unk
            ids.append(token_id)
        return ids

    def rules(self) -> TokenizerRules:
        """How this tokenizer encodes and decodes, for clients that do it themselves."""
        word = self.kind == "word"
        return TokenizerRules(
            kind=self.kind,
            normalization=self.normalize,
            lowercase=self.lowercase,
            word_pattern=_WORD_PATTERN.pattern if word else "",
            offsets=OFFSETS,
            separator=" " if word else "",
            unknown_text=UNKNOWN_TEXT,
            attached=tuple(sorted(_ATTACHED_MARKS)) if word else (),
            attached_categories=_ATTACHED_CATEGORIES if word else (),
        )

    def is_special(self, token_id: int) -> bool:
        return token_id in self._special_ids

    def token_text(self, token_id: int) -> str:
        """The written form of one token, special tokens included (e.g. ``</s>``)."""
        return self.tokens[token_id]

    def piece(self, token_id: int, *, first: bool) -> str:
        """The text one token adds to decoded output.

        Special tokens add nothing, except the unknown token, which shows as U+FFFD.

        Word tokens are separated by a space, so every piece but the first of a text
        starts with one, except punctuation that attaches to the text before it (see
        the module's docstring). Concatenating the pieces of a sequence gives ``decode``.
        """
        if self.is_special(token_id):
            return UNKNOWN_TEXT if token_id == self.special_tokens.get("unk") else ""
        token = self.tokens[token_id]
        if self.kind == "word" and not first and not _attaches(token):
            return " " + token
        return token

    def decode(self, ids: Sequence[int]) -> str:
        out: list[str] = []
        for token_id in ids:
            out.append(self.piece(token_id, first=not out))
            if not out[-1]:
                out.pop()
        return "".join(out)

    # ------------------------------------------------------------------ files

    def save(self, path: Path) -> None:
        """Write the vocabulary file: a JSON object with the ordered token list."""
        path.write_text(
            json.dumps({"tokens": list(self.tokens)}, ensure_ascii=False, indent=0) + "\n",
            encoding="utf-8",
        )

    @staticmethod
    def load_tokens(path: Path) -> tuple[str, ...]:
        data = json.loads(path.read_text(encoding="utf-8"))
        tokens = data.get("tokens") if isinstance(data, dict) else None
        if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
            raise ValueError(f"{path.name}: expected an object with a list of strings 'tokens'")
        return tuple(tokens)
