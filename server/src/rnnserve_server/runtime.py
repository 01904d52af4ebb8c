"""onnxruntime sessions for one model package: one InferenceSession per graph, shared
by every rnnserve session of that model.

The graphs are pure functions of their inputs; the hidden state is explicit input and
output, and the session store owns it between calls.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from rnnserve_server.modelpackage import ModelPackage, PackageError

log = logging.getLogger(__name__)

FloatArray = np.ndarray[Any, np.dtype[np.float32]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]

_PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


@dataclass(frozen=True)
class ProviderChoice:
    """The execution providers (with options) every graph of the server runs on."""

    providers: tuple[tuple[str, dict[str, Any]], ...]
    intra_op_threads: int = 0

    @classmethod
    def resolve(
        cls,
        provider: str,
        *,
        allow_cpu_fallback: bool,
        device_id: int = 0,
        intra_op_threads: int = 0,
    ) -> ProviderChoice:
        """CPU, or CUDA with the CPU as onnxruntime's fallback for unsupported nodes.

        If CUDA is asked for but this onnxruntime build or machine has none: fail with
        a clear message, or (allow_cpu_fallback) warn and use the CPU.
        """
        cpu: tuple[str, dict[str, Any]] = ("CPUExecutionProvider", {})
        if provider == "cpu":
            return cls((cpu,), intra_op_threads)
        available = ort.get_available_providers()
        if _PROVIDER_NAMES[provider] in available:
            cuda = ("CUDAExecutionProvider", {"device_id": device_id})
            return cls((cuda, cpu), intra_op_threads)
        message = (
            f"provider={provider} was requested but onnxruntime offers only {available} "
            "(install onnxruntime-gpu with a matching CUDA runtime)"
        )
        if not allow_cpu_fallback:
            raise RuntimeError(message + "; set allow_cpu_fallback to run on the CPU instead")
        log.warning("%s; falling back to the CPU (allow_cpu_fallback is set)", message)
        return cls((cpu,), intra_op_threads)

    def session(self, path: str) -> ort.InferenceSession:
        options = ort.SessionOptions()
        if self.intra_op_threads:
            options.intra_op_num_threads = self.intra_op_threads
        options.log_severity_level = 3  # onnxruntime's own warnings go to its stderr otherwise
        return ort.InferenceSession(
            path,
            sess_options=options,
            providers=[name for name, _ in self.providers],
            provider_options=[opts for _, opts in self.providers],
        )


class ModelRuntime:
    """The step and head graphs of one package, checked against its manifest."""

    def __init__(self, package: ModelPackage, providers: ProviderChoice) -> None:
        self.package = package
        manifest = package.manifest
        self.layers, self.hidden = manifest.state_shape
        self.output_size = manifest.output_size
        try:
            self._step = providers.session(str(package.graph_path("step")))
            self._head = providers.session(str(package.graph_path("head")))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise PackageError(f"{package.path}: onnxruntime cannot load a graph: {exc}") from None
        self._check_signature("step", self._step)
        self._check_signature("head", self._head)
        self.providers = tuple(self._step.get_providers())
        self.initial_state = self._make_initial_state()

    # ------------------------------------------------------------------ checks

    def _check_signature(self, kind: str, session: ort.InferenceSession) -> None:
        """Every input and output has the name, type and shape the manifest implies."""
        L, H, K = self.layers, self.hidden, self.output_size
        expected: dict[str, tuple[str, tuple[int | None, ...]]] = {
            "tokens": ("tensor(int64)", (None,)),
            "state": ("tensor(float)", (L, None, H)),
            "state_out": ("tensor(float)", (L, None, H)),
            "logits": ("tensor(float)", (None, K)),
        }
        spec = self.package.manifest.graphs[kind]
        where = f"{self.package.graph_path(kind)}"
        for declared, actual in (
            (spec.inputs, session.get_inputs()),
            (spec.outputs, session.get_outputs()),
        ):
            names = tuple(a.name for a in actual)
            if names != declared:
                raise PackageError(f"{where}: graph has {names}, manifest declares {declared}")
            for arg in actual:
                dtype, shape = expected[arg.name]
                got = tuple(d if isinstance(d, int) else None for d in arg.shape)
                if arg.type != dtype or got != shape:
                    raise PackageError(
                        f"{where}: {arg.name} is {arg.type}{list(arg.shape)}, expected "
                        f"{dtype}{['batch' if d is None else d for d in shape]} "
                        f"(layers={L}, hidden_size={H}, outputs={K} from the manifest)"
                    )

    def _make_initial_state(self) -> FloatArray:
        """The state a new session starts from, [L, H] (see InitialStateSpec)."""
        zeros = np.zeros((self.layers, 1, self.hidden), dtype=np.float32)
        spec = self.package.manifest.initial_state
        if spec.kind == "zeros" or spec.token is None:
            return zeros[:, 0, :]
        token = self.package.tokenizer.special_tokens[spec.token]
        _, state = self.step(np.array([token], dtype=np.int64), zeros)
        return np.ascontiguousarray(state[:, 0, :])

    # ------------------------------------------------------------------ inference

    def step(self, tokens: IntArray, state: FloatArray) -> tuple[FloatArray, FloatArray]:
        """One step for a batch: tokens [B], state [L,B,H] -> logits [B,K], state [L,B,H]."""
        logits, new_state = self._step.run(None, {"tokens": tokens, "state": state})
        return logits, new_state

    def run_tokens(self, tokens: IntArray, state: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Feed a sequence [T] to one session's state [L,1,H]; the last logits and state."""
        logits: FloatArray | None = None
        for token in tokens:
            logits, state = self.step(token.reshape(1), state)
        assert logits is not None, "run_tokens needs at least one token"
        return logits, state

    def head(self, state: FloatArray) -> FloatArray:
        """The output for the current state, without feeding a token: [L,B,H] -> [B,K]."""
        (logits,) = self._head.run(None, {"state": state})
        return logits  # type: ignore[no-any-return]
