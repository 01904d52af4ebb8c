"""The training configuration: every default in one dataclass, presets, ``--key=value``.

A run is ``TrainConfig`` defaults, then a preset's values, then command-line overrides.
The checkpoint stores the resulting config so export and sampling need nothing else.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def key(default: Any, help_text: str) -> Any:
    """A TrainConfig field with what it means (``rnnserve-train --help`` lists both)."""
    return dataclasses.field(default=default, metadata={"help": help_text})


@dataclass(frozen=True)
class TrainConfig:
    # --- identity of the exported package: <out>/<name>/<version>/
    name: str = key("char-gru", "package name: <out>/<name>/<version>/")
    version: int = key(0, "package version; 0: the next free one under <out>/<name>/")
    budget: str = key("quick", "which of a zoo preset's budgets sets its values: quick or full")
    description: str = key(
        "Character-level GRU language model of FreeBSD fortunes",
        "what the model is (manifest, model card); with your own --data the default says so",
    )
    # --- the task: a shape of docs/MODELS.md and a data set (see DATA_SHAPES)
    shape: str = key(
        "many-to-many", "task shape: many-to-many, one-to-one, one-to-many, many-to-one, seq2seq"
    )
    data: str = key(
        "fortunes",
        "data set: fortunes, kjv, names, dates, or your own text (a UTF-8 file or a folder "
        "of .txt files, documents separated by blank lines; language models only)",
    )
    # --- model (docs/MODELS.md)
    cell: str = key("gru", "recurrent cell: rnn-tanh, rnn-relu, gru-simple, gru, gru-torch")
    layers: int = key(2, "stacked recurrent layers")
    hidden_size: int = key(256, "hidden state size of each layer")
    head: str = key("softmax", "many-to-one only: softmax over the labels, or sigmoid (one each)")
    prefix_loss: float = key(0.0, "many-to-one: weight of the mean loss over every step")
    part_dropout: float = key(
        0.0, "many-to-one names: share of training names cut to one part (augment.py)"
    )
    part_splice: float = key(
        0.0,
        "many-to-one names: chance a training name's part is a prefix of it joined to a "
        "suffix of another of its locale's parts (augment.py)",
    )
    embedding_size: int = key(
        0, "0: the first layer gathers rows of W_x; d: tokens read an embedding E[x] of size d"
    )
    tie_embeddings: bool = key(False, "W_ya = E (needs embedding_size = hidden_size)")
    dropout: float = key(0.0, "dropout of the embedding and every layer's output, in training")
    ensemble: int = key(
        1,
        "members trained with seeds seed, seed+1, ... and served merged as one network of "
        "their units side by side, the mean of their logits (ensemble.py, merge.py)",
    )
    # --- vocabulary, built from the training split only
    tokenizer: str = key("char", "char (one token per character) or word")
    vocab_size: int = key(0, "most tokens in the vocabulary, specials included; 0: no cap")
    min_count: int = key(5, "rarer training tokens map to <unk>")
    lowercase: bool = key(False, "lowercase text before tokenizing")
    # --- data
    max_documents: int = key(0, "0: every document/example; N: the first N (dates: N generated)")
    val_fraction: float = key(0.05, "share of documents held out for validation")
    test_fraction: float = key(0.05, "share of documents held out for the final test")
    # --- optimisation: truncated BPTT over chunks of seq_len steps for streams (LMs),
    # full BPTT over padded batches of whole examples for the other shapes
    seq_len: int = key(64, "steps per chunk of truncated BPTT (language models)")
    batch_size: int = key(64, "sequences per optimizer step")
    lr: float = key(4e-3, "peak learning rate (AdamW)")
    min_lr: float = key(4e-4, "learning rate at the end of the cosine decay from lr")
    warmup_steps: int = key(50, "steps of linear warm-up to lr")
    weight_decay: float = key(0.0, "AdamW weight decay")
    grad_clip: float = key(1.0, "gradient norm clipping")
    max_steps: int = key(800, "optimizer steps")
    seed: int = key(1337, "random seed (initialization, batches, sampling)")
    resume: bool = key(False, "continue <runs>/<name>/checkpoint.pt (to max_steps) if it exists")
    # --- evaluation and output
    eval_every: int = key(200, "steps between evaluations on the validation split")
    eval_batch_size: int = key(128, "sequences per evaluation batch")
    sample_chars: int = key(300, "length of the samples in the model card")
    device: str = key("cpu", "torch device: cpu or cuda")
    # One thread by default, because a step's matrices are small: a second thread gained
    # nothing on 2 cores, and when other work shares the cores, waiting threads burn the
    # CPU the first one needs.
    threads: int = key(1, "torch intra-op threads; 0: torch's default (one per core)")
    progress: bool = key(True, "show a progress bar")
    out: str = key("models", "model repository the package is written to")
    runs: str = key("runs", "folder of checkpoints, metrics and loss plots: <runs>/<name>/")
    # --- export
    export: bool = key(True, "write the model package after training")
    sequence_graph: str = key(
        "native", "sequence graph: native (ONNX RNN/GRU operators) or scan (primitives)"
    )
    parity_steps: int = key(200, "greedy steps of the export parity gate")

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """The config saved in a checkpoint; keys unknown to this version are an error."""
        check_keys(data)
        return cls(**data)


# Presets override the defaults above. `tiny` exists for tests: a real model trained on
# a slice of the corpus in a few seconds. The others are the demo zoo (rnnserve_train.zoo),
# one model per shape of docs/MODELS.md, each sized to train in about a minute or two on
# one core (docs/models.md has their numbers).
PRESETS: dict[str, dict[str, Any]] = {
    "char-gru": {"lr": 8e-3, "min_lr": 8e-4, "max_steps": 650, "eval_every": 325},
    "word-gru": {
        "name": "word-gru",
        "description": "Word-level GRU language model of the King James Bible (10k words)",
        "data": "kjv",
        "tokenizer": "word",
        "vocab_size": 10_000,
        "min_count": 1,
        "layers": 1,
        "hidden_size": 128,
        "seq_len": 32,
        "batch_size": 64,
        "lr": 6e-3,
        "min_lr": 6e-4,
        "warmup_steps": 30,
        "max_steps": 300,
        "eval_every": 150,
        "eval_batch_size": 256,
        "sample_chars": 60,
    },
    "one-step": {
        "name": "one-step",
        "description": (
            "One-to-one: a vanilla ReLU RNN that reads one word of the King James Bible "
            "and predicts the next (a neural bigram model)"
        ),
        "shape": "one-to-one",
        "data": "kjv",
        "tokenizer": "word",
        "vocab_size": 10_000,
        "min_count": 1,
        "cell": "rnn-relu",
        "layers": 1,
        "hidden_size": 128,
        "batch_size": 512,
        "lr": 5e-3,
        "min_lr": 5e-4,
        "max_steps": 600,
        "eval_every": 300,
        "eval_batch_size": 4096,
        "sample_chars": 20,
    },
    "name-generator": {
        "name": "name-generator",
        "description": "One-to-many: a locale's person names, generated character by character",
        "shape": "one-to-many",
        "data": "names",
        "cell": "gru-simple",
        "layers": 1,
        "hidden_size": 128,
        "min_count": 2,
        "batch_size": 64,
        "lr": 5e-3,
        "min_lr": 5e-4,
        "max_steps": 1200,
        "eval_every": 400,
        "eval_batch_size": 512,
        "sample_chars": 30,
    },
    "name-language": {
        "name": "name-language",
        "description": "Many-to-one: the locale of a person name, read character by character",
        "shape": "many-to-one",
        "data": "names",
        "cell": "gru",
        "layers": 1,
        "hidden_size": 128,
        "min_count": 2,
        "prefix_loss": 0.5,
        "batch_size": 64,
        "lr": 5e-3,
        "min_lr": 5e-4,
        "max_steps": 1500,
        "eval_every": 500,
        "eval_batch_size": 512,
        "sample_chars": 30,
    },
    "dates": {
        "name": "dates",
        "description": "Seq2seq: dates written in 8 locales and 4 styles -> ISO 8601",
        "shape": "seq2seq",
        "data": "dates",
        "cell": "gru",
        "layers": 1,
        "hidden_size": 128,
        "min_count": 2,
        "max_documents": 30_000,
        "batch_size": 64,
        "lr": 5e-3,
        "min_lr": 5e-4,
        "max_steps": 3000,
        "eval_every": 1000,
        "eval_batch_size": 512,
        "sample_chars": 12,
    },
    "vowels": {
        "name": "vowels",
        "description": (
            "Many-to-one over float vectors: the speaker (of 9) of a Japanese vowel, "
            "read frame by frame (12 LPC cepstrum coefficients each)"
        ),
        "shape": "many-to-one",
        "data": "japanese-vowels",
        "cell": "lstm",
        "layers": 1,
        "hidden_size": 48,
        "batch_size": 32,
        "lr": 1e-2,
        "max_steps": 400,
        "eval_every": 100,
    },
    "tiny": {
        "name": "char-gru-tiny",
        "description": "Tiny character-level GRU (tests only) on a slice of FreeBSD fortunes",
        "layers": 1,
        "hidden_size": 32,
        "max_documents": 1500,
        "min_count": 3,
        "seq_len": 32,
        "batch_size": 16,
        "lr": 1e-2,
        "min_lr": 1e-3,
        "warmup_steps": 10,
        "max_steps": 150,
        "eval_every": 50,
        "eval_batch_size": 64,
        "sample_chars": 120,
    },
}

# The full budget of each zoo model: what it trains with to beat its baseline
# (`rnnserve-train zoo --budget=full`; docs/models.md has the figures), applied over the
# preset's quick values, which keep `make models` to minutes. Epochs, a cosine schedule,
# dropout, tied embeddings and larger layers, as the field trains recurrent models.
# The word models: 256 units, the output layer tied to the embedding, dropout.
_TIED_WORDS: dict[str, Any] = {
    "hidden_size": 256,
    "embedding_size": 256,
    "tie_embeddings": True,
    "dropout": 0.3,
    "lr": 3e-3,
    "min_lr": 1e-4,
}
FULL_BUDGET: dict[str, dict[str, Any]] = {
    "char-gru": {
        "layers": 3,
        "dropout": 0.15,
        "lr": 4e-3,
        "min_lr": 1e-4,
        "warmup_steps": 100,
        "max_steps": 6000,
        "eval_every": 500,
    },
    "word-gru": {
        **_TIED_WORDS,
        "warmup_steps": 100,
        "max_steps": 3000,
        "eval_every": 250,
    },
    "one-step": {
        # Without the word models' dropout: a neural bigram underfits with it (held-out
        # perplexity 92 after 2,500 steps at 0.3, 81 at 0.0); weight decay instead keeps
        # it from overfitting the commonest pairs (test 77.0 without, 74.8 at 0.1, where
        # KN's bigram has 76.9; docs/models.md).
        **_TIED_WORDS,
        "dropout": 0.0,
        "weight_decay": 0.1,
        "lr": 5e-3,
        "max_steps": 6000,
        "eval_every": 500,
    },
    "name-language": {
        "hidden_size": 256,
        "embedding_size": 64,
        "dropout": 0.3,
        "part_dropout": 0.3,
        "part_splice": 0.3,
        "ensemble": 4,
        "lr": 3e-3,
        "min_lr": 1e-4,
        "max_steps": 6000,
        "eval_every": 500,
    },
    "name-generator": {
        "hidden_size": 256,
        "dropout": 0.2,
        "lr": 3e-3,
        "min_lr": 1e-4,
        "max_steps": 3000,
        "eval_every": 500,
    },
    "dates": {
        "lr": 4e-3,
        "min_lr": 1e-4,
        "max_steps": 8000,
        "eval_every": 1000,
    },
    "vowels": {
        "hidden_size": 64,
        "max_steps": 1200,
        "eval_every": 200,
    },
}
BUDGETS = ("quick", "full")

# The data sets each shape can train on.
DATA_SHAPES: dict[str, tuple[str, ...]] = {
    "many-to-many": ("fortunes", "kjv"),
    "one-to-one": ("fortunes", "kjv"),
    "one-to-many": ("names",),
    "many-to-one": ("names", "japanese-vowels"),
    "seq2seq": ("dates",),
}
NAMED_DATA = frozenset(name for names in DATA_SHAPES.values() for name in names)
# Shapes that also train on your own text (data = a UTF-8 file or a folder of .txt files).
TEXT_SHAPES = ("many-to-many", "one-to-one")
SEQUENCE_GRAPH_FORMS = ("native", "scan")


def model_options(config: TrainConfig) -> dict[str, Any]:
    """The keyword arguments of ``RNNLanguageModel`` that the config decides beyond the
    cell and its sizes."""
    return {
        "embedding_size": config.embedding_size,
        "tie_embeddings": config.tie_embeddings,
        "dropout": config.dropout,
    }


class ConfigError(ValueError):
    """An unknown key or a value that does not parse as the field's type."""


def field_types() -> dict[str, type]:
    hints = typing.get_type_hints(TrainConfig)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainConfig)}


def check_keys(keys: Iterable[str]) -> None:
    known = field_types()
    unknown = sorted(set(keys) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(known)}"
        )


def parse_value(key: str, text: str) -> Any:
    """Parse ``text`` as the type of the field ``key`` (int, float, bool or str)."""
    kind = field_types()[key]
    try:
        if kind is bool:
            lowered = text.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind is int:
            return int(text)
        if kind is float:
            return float(text)
    except ValueError:
        raise ConfigError(f"--{key}={text}: expected {kind.__name__}") from None
    return text


def parse_overrides(args: Iterable[str]) -> dict[str, Any]:
    """``["--lr=1e-3", "--layers=1"]`` -> ``{"lr": 0.001, "layers": 1}``."""
    overrides: dict[str, Any] = {}
    for arg in args:
        if not arg.startswith("--") or "=" not in arg:
            raise ConfigError(f"{arg!r}: expected --key=value")
        key, value = arg[2:].split("=", 1)
        key = key.replace("-", "_")
        check_keys([key])
        overrides[key] = parse_value(key, value)
    return overrides


def make_config(
    preset: str = "char-gru", overrides: Mapping[str, Any] | None = None
) -> TrainConfig:
    """The defaults, the preset, its full budget if ``overrides`` ask for
    ``budget="full"``, then the overrides."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    budget = (overrides or {}).get("budget", "quick")
    if budget not in BUDGETS:
        raise ConfigError(f"budget={budget!r} is not one of {', '.join(BUDGETS)}")
    if budget == "full" and preset not in FULL_BUDGET:
        raise ConfigError(
            f"preset {preset!r} has no full budget (the zoo's have: {', '.join(FULL_BUDGET)})"
        )
    values = {
        **PRESETS[preset],
        **(FULL_BUDGET[preset] if budget == "full" else {}),
        **(overrides or {}),
    }
    check_keys(values)
    config = TrainConfig(**values)
    if is_own_text(config.data) and "description" not in (overrides or {}):
        config = config.replace(description=own_text_description(config))
    validate(config)
    return config


def is_own_text(data: str) -> bool:
    """``data`` names your own text (a file or folder), not one of the data sets."""
    return data not in NAMED_DATA


def own_text_description(config: TrainConfig) -> str:
    """What a model trained on your own text is: a preset's description would name the
    preset's data instead."""
    unit = "Character" if config.tokenizer == "char" else "Word"
    cell = config.cell.upper() if config.cell.startswith("gru") else config.cell
    what = "language model" if config.shape == "many-to-many" else "next-token model (one-to-one)"
    return f"{unit}-level {cell} {what} of user-supplied text ({config.data})"


def validate(config: TrainConfig) -> None:
    from rnnserve_train.model import CELLS  # late: keeps config importable without torch

    problems = []
    if config.cell not in CELLS:
        problems.append(f"cell={config.cell!r} is not one of {sorted(CELLS)}")
    if config.shape not in DATA_SHAPES:
        problems.append(f"shape={config.shape!r} is not one of {list(DATA_SHAPES)}")
    elif config.data not in DATA_SHAPES[config.shape] and not (
        config.shape in TEXT_SHAPES and is_own_text(config.data)
    ):
        problems.append(
            f"data={config.data!r} does not fit shape={config.shape!r} "
            f"(it trains on {', '.join(DATA_SHAPES[config.shape])}"
            + (", or your own text: a file or folder" if config.shape in TEXT_SHAPES else "")
            + ")"
        )
    elif is_own_text(config.data) and not Path(config.data).exists():
        problems.append(
            f"data={config.data!r} is neither one of the data sets "
            f"({', '.join(DATA_SHAPES[config.shape])}) nor an existing file or folder"
        )
    if config.tokenizer not in ("char", "word"):
        problems.append(f"tokenizer={config.tokenizer!r} is not char or word")
    if config.head not in ("softmax", "sigmoid"):
        problems.append(f"head={config.head!r} is not softmax or sigmoid")
    elif config.head == "sigmoid" and config.shape != "many-to-one":
        problems.append("head=sigmoid is for shape=many-to-one (a classifier)")
    if config.sequence_graph not in SEQUENCE_GRAPH_FORMS:
        problems.append(f"sequence_graph={config.sequence_graph!r} is not native or scan")
    for key in ("layers", "hidden_size", "seq_len", "batch_size", "max_steps", "eval_every"):
        if getattr(config, key) < 1:
            problems.append(f"{key}={getattr(config, key)} must be at least 1")
    if config.vocab_size and config.vocab_size < 5:
        problems.append(f"vocab_size={config.vocab_size} must be 0 (no cap) or at least 5")
    if config.embedding_size < 0:
        problems.append(f"embedding_size={config.embedding_size} must be 0 (none) or positive")
    if config.tie_embeddings and config.embedding_size != config.hidden_size:
        problems.append(
            f"tie_embeddings=true needs embedding_size = hidden_size ({config.hidden_size}), "
            f"got {config.embedding_size}"
        )
    if config.tie_embeddings and config.shape == "many-to-one":
        problems.append("tie_embeddings=true needs a vocabulary output, not a classifier's labels")
    if not 0.0 <= config.dropout < 1.0:
        problems.append(f"dropout={config.dropout} must be in [0, 1)")
    if config.ensemble < 1:
        problems.append(f"ensemble={config.ensemble} must be at least 1")
    elif config.ensemble > 1 and (
        config.tie_embeddings
        or config.shape in ("one-to-many", "seq2seq")
        or config.data == "japanese-vowels"
    ):
        problems.append(
            f"ensemble={config.ensemble}: members are merged for token models without tied "
            "embeddings, an encoder or initial-state conditions (not for one-to-many, "
            "seq2seq or japanese-vowels)"
        )
    for key in ("part_dropout", "part_splice"):
        value = getattr(config, key)
        if not 0.0 <= value <= 1.0:
            problems.append(f"{key}={value} must be in [0, 1]")
        elif value and (config.shape, config.data) != ("many-to-one", "names"):
            problems.append(f"{key}={value} is for shape=many-to-one, data=names only")
    if config.min_count < 1 or config.parity_steps < 1:
        problems.append("min_count and parity_steps must be at least 1")
    if config.val_fraction <= 0 or config.test_fraction <= 0:
        problems.append("val_fraction and test_fraction must be positive")
    if config.val_fraction + config.test_fraction >= 1:
        problems.append("val_fraction + test_fraction must be below 1")
    if config.version < 0:
        problems.append(f"version={config.version} must be 0 (next free) or positive")
    if problems:
        raise ConfigError("; ".join(problems))
