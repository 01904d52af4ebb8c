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
    # --- model (docs/MODELS.md)
    cell: str = "gru"
    layers: int = 2
    hidden_size: int = 256
    # --- data
    data: str = "fortunes"
    max_documents: int = 0  # 0: every document; N: the first N (for quick runs)
    min_char_count: int = 5  # rarer training characters map to <unk>
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    # --- optimisation: truncated BPTT over chunks of seq_len steps, state carried
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
# a slice of the corpus in a few seconds. `char-gru` is the model the service ships.
PRESETS: dict[str, dict[str, Any]] = {
    "char-gru": {},
    "tiny": {
        "name": "char-gru-tiny",
        "description": "Tiny character-level GRU (tests only) on a slice of FreeBSD fortunes",
        "layers": 1,
        "hidden_size": 32,
        "max_documents": 1500,
        "min_char_count": 3,
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
    for key in ("layers", "hidden_size", "seq_len", "batch_size", "max_steps", "eval_every"):
        if getattr(config, key) < 1:
            problems.append(f"{key}={getattr(config, key)} must be at least 1")
    if config.val_fraction <= 0 or config.test_fraction <= 0:
        problems.append("val_fraction and test_fraction must be positive")
    if config.val_fraction + config.test_fraction >= 1:
        problems.append("val_fraction + test_fraction must be below 1")
    if config.version < 0:
        problems.append(f"version={config.version} must be 0 (next free) or positive")
    if problems:
        raise ConfigError("; ".join(problems))
