"""rnnserve training: RNN, GRU and LSTM models in PyTorch, exported as rnnserve model
packages; ``package_torch`` packages a PyTorch module of your own (README, "Serve your
own model")."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["package_torch"]


def package_torch(*args: Any, **kwargs: Any) -> Any:
    """``rnnserve_train.package.package_torch`` (imported on first use: torch loads then)."""
    from rnnserve_train.package import package_torch as package

    return package(*args, **kwargs)
