"""Fixtures of the training tests. The tiny package itself comes from tests/conftest.py
(``models_dir``, ``tiny_package``), trained once per session with ``build_tiny_package``."""

from __future__ import annotations

from pathlib import Path

import pytest

from rnnserve_server.tokenizer import Tokenizer
from rnnserve_train.api import tiny_checkpoint as tiny_checkpoint_path


@pytest.fixture(scope="session")
def tiny_checkpoint(models_dir: Path, tiny_package: Path) -> Path:
    """The checkpoint the session's tiny package was exported from."""
    return tiny_checkpoint_path(models_dir)


@pytest.fixture(scope="session")
def small_tokenizer() -> Tokenizer:
    return Tokenizer.build("char", ["The quick brown fox jumps over the lazy dog.\n"])
