"""The training configuration: every default in one dataclass, presets, ``--key=value``.

A run is ``TrainConfig`` defaults, then a preset's values, then command-line overrides.
The checkpoint stores the resulting config so export and sampling need nothing else.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class TrainConfig:
    # --- identity of the exported package: <out>/<name>/<version>/
    name: str = "char-gru"
    version: int = 0  # 0: the next free version under <out>/<name>/
    description: str = "Character-level GRU language model of FreeBSD fortunes"
    # --- the task: a shape of docs/MODELS.md and a data set (see DATA_SHAPES)
    shape: str = "many-to-many"
    data: str = "fortunes"  # fortunes, kjv, names, dates, or a text file/folder (LMs)
    # --- model (docs/MODELS.md)
    cell: str = "gru"
    layers: int = 2
    hidden_size: int = 256
    head: str = "softmax"  # many-to-one only: softmax over the labels, or one sigmoid each
    prefix_loss: float = 0.0  # many-to-one: weight of the mean loss over every step
    # --- vocabulary, built from the training split only
    tokenizer: str = "char"  # char or word
    vocab_size: int = 0  # at most this many tokens, specials included (0: no cap)
    min_count: int = 5  # rarer training tokens map to <unk>
    lowercase: bool = False
    # --- data
    max_documents: int = 0  # 0: every document/example; N: the first N (dates: N generated)
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    # --- optimisation: truncated BPTT over chunks of seq_len steps for streams (LMs),
    # full BPTT over padded batches of whole examples for the other shapes
    seq_len: int = 64
    batch_size: int = 64
    lr: float = 4e-3
    min_lr: float = 4e-4  # cosine decay from lr to min_lr over max_steps
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_steps: int = 800
    seed: int = 1337
    resume: bool = False  # continue <runs>/<name>/checkpoint.pt (to max_steps) if it exists
    # --- evaluation and output
    eval_every: int = 200
    eval_batch_size: int = 128
    sample_chars: int = 300  # length of the samples in the model card
    device: str = "cpu"
    # torch intra-op threads (0: torch's default, one per core). One, because a step's
    # matrices are small: a second thread gained nothing on 2 cores, and when other work
    # shares the cores, waiting threads burn the CPU the first one needs.
    threads: int = 1
    progress: bool = True
    out: str = "models"
    runs: str = "runs"
    # --- export
    export: bool = True  # write the model package after training
    sequence_graph: str = "native"  # native (ONNX RNN/GRU operators) or scan (primitives)
    parity_steps: int = 200  # greedy steps of the export parity gate

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
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    values = {**PRESETS[preset], **(overrides or {})}
    check_keys(values)
    config = TrainConfig(**values)
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    from rnnserve_train.model import CELLS  # late: keeps config importable without torch

    problems = []
    if config.cell not in CELLS:
        problems.append(f"cell={config.cell!r} is not one of {sorted(CELLS)}")
    if config.shape not in DATA_SHAPES:
        problems.append(f"shape={config.shape!r} is not one of {list(DATA_SHAPES)}")
    elif config.data not in DATA_SHAPES[config.shape] and not (
        config.shape in TEXT_SHAPES and config.data not in NAMED_DATA
    ):
        problems.append(
            f"data={config.data!r} does not fit shape={config.shape!r} "
            f"(it trains on {', '.join(DATA_SHAPES[config.shape])}"
            + (", or your own text: a file or folder" if config.shape in TEXT_SHAPES else "")
            + ")"
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
