"""rnnserve server: stateful gRPC serving of RNN and GRU models on onnxruntime."""

__version__ = "0.1.0"
