"""rnnserve's benchmark harness: rnnserve against a no-model echo server (the transport
ceiling), a plain onnxruntime-per-step server (the baseline) and raw in-process
onnxruntime, on one model and one transport, in one run.

``python -m bench`` runs it (``--quick`` for a smoke run); see ``bench/run.py``.
"""
