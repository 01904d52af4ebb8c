"""The Python face of rnnserve-train, for tests and scripts."""

from __future__ import annotations

import os
from pathlib import Path

from rnnserve_server.tokenizer import Tokenizer
from rnnserve_server.trainingmarks import MarkKeeper
from rnnserve_train import checkpoint as _checkpoint
from rnnserve_train import vowels
from rnnserve_train.config import PRESETS, TrainConfig, make_config
from rnnserve_train.export import export_checkpoint, export_model
from rnnserve_train.generate import greedy_tokens, sample_tokens
from rnnserve_train.model import RNNLanguageModel
from rnnserve_train.package import PackagingError, UnsupportedModule, package_torch
from rnnserve_train.parity import ParityError
from rnnserve_train.train import TrainResult, train

__all__ = [
    "PackagingError",
    "ParityError",
    "TrainConfig",
    "TrainResult",
    "UnsupportedModule",
    "build_tiny_package",
    "export_checkpoint",
    "export_model",
    "greedy_tokens",
    "load_checkpoint",
    "make_config",
    "package_torch",
    "sample_tokens",
    "tiny_checkpoint",
    "tiny_runs_dir",
    "train",
    "train_and_export",
]


def train_and_export(config: TrainConfig) -> Path | None:
    """Train, then export; return the package directory ``<out>/<name>/<version>``.

    Under torchrun only rank 0 exports; the other ranks (and ``export=False``) return None.
    The float-vector data set (``japanese-vowels``) trains and packages its own module
    (``vowels``). While it trains and exports, ``<out>/<name>/training.json`` marks the
    model as training (``rnnserve_server.trainingmarks``).
    """
    vectors = config.data == vowels.DATA
    if not vectors and (int(os.environ.get("RANK", "0")) != 0 or not config.export):
        train(config)
        return None
    # Marked in the repository while it trains, so a server there calls it unavailable
    # (still training), not unknown.
    steps = config.max_steps * config.ensemble  # an ensemble's members, one after another
    with MarkKeeper(Path(config.out) / config.name, config.name, steps) as mark:
        if vectors:
            return vowels.train_and_package(config, mark.update)
        result = train(config, mark.update)
        mark.update(phase="exporting")
        return export_checkpoint(result.checkpoint, Path(config.out), config.version)


def load_checkpoint(path: Path) -> tuple[RNNLanguageModel, Tokenizer, TrainConfig]:
    """The model (in eval mode, on the CPU), its tokenizer and its config."""
    loaded = _checkpoint.load_checkpoint(path)
    return loaded.model, loaded.tokenizer, loaded.config


def tiny_runs_dir(models_dir: Path) -> Path:
    """Where ``build_tiny_package(models_dir)`` keeps its run: beside the repository,
    so the repository holds nothing but packages."""
    return models_dir.parent / f"{models_dir.name}-runs"


def build_tiny_package(models_dir: Path, runs_dir: Path | None = None) -> Path:
    """Train the ``tiny`` preset and export it into the repository ``models_dir`` (~10 s).

    Returns the package ``models_dir/char-gru-tiny/<next version>``. The run (checkpoint,
    metrics, plot) goes to ``runs_dir/char-gru-tiny``, by default under
    ``tiny_runs_dir(models_dir)``; ``load_checkpoint`` on its ``checkpoint.pt`` gives the
    torch model for comparisons with the served one.
    """
    runs = runs_dir if runs_dir is not None else tiny_runs_dir(models_dir)
    config = make_config("tiny", {"out": str(models_dir), "runs": str(runs), "progress": False})
    package = train_and_export(config)
    assert package is not None
    return package


def tiny_checkpoint(models_dir: Path, runs_dir: Path | None = None) -> Path:
    """The checkpoint that ``build_tiny_package`` with the same arguments wrote."""
    runs = runs_dir if runs_dir is not None else tiny_runs_dir(models_dir)
    name: str = PRESETS["tiny"]["name"]
    return runs / name / "checkpoint.pt"
