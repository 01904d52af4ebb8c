"""The KServe v2 / Triton gRPC front (``inference.GRPCInferenceService``) over the engine.

pb          the stubs generated from proto/inference (make proto)
tensors     the protocol's tensor wire format
models      what a model package looks like to KServe: its tensors, metadata, config
requests    a ModelInferRequest read for a model; its answer built
sequences   Triton's sequence semantics (sequence_id, start, end) over sessions
service     the servicer
"""
