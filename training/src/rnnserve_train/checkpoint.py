"""Checkpoints that carry everything needed to rebuild the model: config, vocabulary,
weights, and the facts of the run (data, split, time, metrics) that export records."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rnnserve_server.tokenizer import Tokenizer
from rnnserve_train.config import TrainConfig
from rnnserve_train.model import RNNLanguageModel

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class Checkpoint:
    model: RNNLanguageModel
    tokenizer: Tokenizer
    config: TrainConfig
    step: int = 0
    training: dict[str, Any] = field(default_factory=dict)  # data, licence, split, time
    metrics: dict[str, float] = field(default_factory=dict)  # bits per character, ...
    optimizer: dict[str, Any] | None = None  # the optimizer's state, to resume


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    tokenizer = checkpoint.tokenizer
    payload = {
        "config": checkpoint.config.to_dict(),
        "tokenizer": {
            "kind": tokenizer.kind,
            "tokens": list(tokenizer.tokens),
            "special_tokens": dict(tokenizer.special_tokens),
            "normalize": tokenizer.normalize,
            "lowercase": tokenizer.lowercase,
        },
        "model": checkpoint.model.state_dict(),
        "architecture": {
            "output_size": checkpoint.model.output_size,
            "encoder": checkpoint.model.encoder is not None,
            "conditions": checkpoint.model.conditions,
            "input_size": checkpoint.model.input_size,
            "embedding_size": checkpoint.model.embedding_size,
        },
        "step": checkpoint.step,
        "training": checkpoint.training,
        "metrics": checkpoint.metrics,
        "optimizer": checkpoint.optimizer,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    torch.save(payload, partial)
    partial.replace(path)  # a crash never leaves half a checkpoint under the real name


def load_checkpoint(path: Path, device: str = "cpu") -> Checkpoint:
    payload = torch.load(path, map_location=device, weights_only=True)
    config = TrainConfig.from_dict(payload["config"])
    spec = payload["tokenizer"]
    tokenizer = Tokenizer(
        kind=spec["kind"],
        tokens=tuple(spec["tokens"]),
        special_tokens=dict(spec["special_tokens"]),
        normalize=spec["normalize"],
        lowercase=spec["lowercase"],
    )
    architecture = payload["architecture"]
    input_size = int(architecture.get("input_size", 0))  # older checkpoints: tokens
    model = RNNLanguageModel(
        config.cell,
        0 if input_size else tokenizer.size,
        config.hidden_size,
        config.layers,
        output_size=int(architecture["output_size"]),
        encoder=bool(architecture["encoder"]),
        conditions=int(architecture["conditions"]),
        input_size=input_size,
        embedding_size=int(architecture.get("embedding_size", 0)),
    )
    model.load_state_dict(payload["model"])
    model.to(device).eval()
    return Checkpoint(
        model=model,
        tokenizer=tokenizer,
        config=config,
        step=int(payload["step"]),
        training=dict(payload["training"]),
        metrics={k: float(v) for k, v in payload["metrics"].items()},
        optimizer=payload["optimizer"],
    )
