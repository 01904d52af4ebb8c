"""rnnserve training: RNN and GRU models in PyTorch, exported as rnnserve model packages."""

__version__ = "0.1.0"
