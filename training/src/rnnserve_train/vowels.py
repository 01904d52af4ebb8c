"""The zoo's float-vector model: speakers from frames of speech, one frame at a time.

Data: JapaneseVowels (M. Kudo, J. Toyama, M. Shimbo, 1999; the UCI Machine Learning
Repository, CC BY 4.0), as the UEA multivariate time-series archive distributes it and
``sktime`` ships it (offline, inside the package): nine male speakers saying the vowels
/ae/, each utterance 7 to 29 frames of 12 LPC cepstrum coefficients. Split: the archive's
own, 270 training utterances (30 per speaker) and 370 test utterances.

The model is the common stack a user would write (``nn.Linear`` -> ``nn.LSTM`` ->
``nn.Linear``), trained with a loss at every frame (so the label is available after
each frame; the last one is the answer), and packaged with ``package_torch`` like any
user's model, its input standardisation folded into the first layer so the served model
reads the raw coefficients. The baseline is sktime's 1-nearest-neighbour classifier on
the same split (``baselines.py``).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional

from rnnserve_train.config import TrainConfig
from rnnserve_train.package import package_torch

log = logging.getLogger(__name__)

DATA = "japanese-vowels"
FEATURES = 12
SPEAKERS = tuple(str(i) for i in range(1, 10))
SOURCE = {
    "data": "JapaneseVowels (UEA multivariate archive), from sktime==1.2.0",
    "licence": "CC BY 4.0 (UCI Machine Learning Repository: Kudo, Toyama, Shimbo, 1999)",
    "split": "the archive's: 270 train (30 per speaker), 370 test",
}


def load_split(split: str) -> tuple[list[np.ndarray], list[str]]:
    """The utterances of ``split`` ("train" or "test"): [T, 12] float32 each, and their
    speakers ("1" .. "9")."""
    from sktime.datasets import load_japanese_vowels  # late: pandas loads only here

    frame, labels = load_japanese_vowels(split=split, return_type="nested_univ")
    series = [
        np.stack([np.asarray(frame.iloc[row, d], dtype=np.float32) for d in range(FEATURES)], 1)
        for row in range(len(frame))
    ]
    return series, [str(label) for label in labels]


class VowelLSTM(nn.Module):
    """The common stack: a projection of the 12 coefficients, an LSTM, a speaker head."""

    def __init__(self, hidden_size: int, layers: int) -> None:
        super().__init__()
        self.project = nn.Linear(FEATURES, hidden_size)
        self.lstm = nn.LSTM(hidden_size, hidden_size, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden_size, len(SPEAKERS))

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.lstm(self.project(x))
        logits: Tensor = self.out(h)
        return logits


def _padded(series: list[np.ndarray]) -> tuple[Tensor, Tensor]:
    """A batch [B, T_max, 12] (zeros after each end) and its mask [B, T_max]."""
    longest = max(len(s) for s in series)
    batch = torch.zeros(len(series), longest, FEATURES)
    mask = torch.zeros(len(series), longest, dtype=torch.bool)
    for i, s in enumerate(series):
        batch[i, : len(s)] = torch.from_numpy(s)
        mask[i, : len(s)] = True
    return batch, mask


def _fold_standardisation(model: VowelLSTM, mean: Tensor, std: Tensor) -> None:
    """The projection of standardised inputs, W (x - mean) / std + b, as one of raw ones."""
    with torch.no_grad():
        weight = model.project.weight / std
        model.project.bias.copy_(model.project.bias - weight @ mean)
        model.project.weight.copy_(weight)


def accuracy(model: nn.Module, series: list[np.ndarray], labels: list[str]) -> float:
    """The share of utterances whose speaker is the most probable after their last frame."""
    batch, mask = _padded(series)
    with torch.no_grad():
        logits = model(batch)
    last = logits[torch.arange(len(series)), mask.sum(1) - 1]
    predicted = [SPEAKERS[i] for i in last.argmax(-1).tolist()]
    return float(np.mean([p == y for p, y in zip(predicted, labels, strict=True)]))


def train_and_package(config: TrainConfig) -> Path:
    """Train on the training split, measure on the test split, package; the package."""
    started = time.perf_counter()
    torch.manual_seed(config.seed)
    torch.set_num_threads(max(1, config.threads))
    train_x, train_y = load_split("train")
    test_x, test_y = load_split("test")
    frames = torch.from_numpy(np.concatenate(train_x))
    mean, std = frames.mean(0), frames.std(0)
    model = VowelLSTM(config.hidden_size, config.layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    targets = torch.tensor([SPEAKERS.index(y) for y in train_y])
    generator = torch.Generator().manual_seed(config.seed)
    model.train()
    for step in range(config.max_steps):
        rows = torch.randperm(len(train_x), generator=generator)[: config.batch_size].tolist()
        batch, mask = _padded([train_x[r] for r in rows])
        logits = model((batch - mean) / std)
        per_frame = targets[rows][:, None].expand(mask.shape)
        loss = functional.cross_entropy(logits[mask], per_frame[mask])
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        if (step + 1) % config.eval_every == 0:
            log.info("step %d: train loss %.3f", step + 1, float(loss))
    model.eval()
    _fold_standardisation(model, mean, std)
    test_accuracy = accuracy(model, test_x, test_y)
    seconds = time.perf_counter() - started
    log.info("test accuracy %.4f after %.0f s", test_accuracy, seconds)
    training: dict[str, Any] = {
        **SOURCE,
        "split_sizes": {"train": len(train_x), "test": len(test_x)},
        "steps": config.max_steps,
        "seconds": round(seconds, 1),
        "seed": config.seed,
    }
    return package_torch(
        model,
        Path(config.out),
        name=config.name,
        version=config.version or _next_version(Path(config.out) / config.name),
        input_size=FEATURES,
        labels=[f"speaker {s}" for s in SPEAKERS],
        shape="many-to-one",
        description=config.description,
        training=training,
        metrics={"test_accuracy": test_accuracy},
    )


def _next_version(model_dir: Path) -> int:
    versions = [int(p.name) for p in model_dir.glob("*") if p.name.isdigit()]
    return max(versions, default=0) + 1
