"""onnxruntime sessions for one model package: one InferenceSession per graph, shared
by every rnnserve session of that model.

The graphs are pure functions of their inputs; the hidden state is explicit input and
output, and the session store owns it between calls.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from rnnserve_server.errors import FailedPrecondition
from rnnserve_server.gengraph import GenerationGraph, Unsupported, verify
from rnnserve_server.manifest import PackageError
from rnnserve_server.modelpackage import ModelPackage
from rnnserve_server.sharedweights import load_shared_weights

log = logging.getLogger(__name__)

FloatArray = np.ndarray[Any, np.dtype[np.float32]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]
# What the graphs read: token ids (int64 [B], [T]) or vectors (float32 [B, n_x], [T, n_x]).
Inputs = np.ndarray[Any, Any]

_PROVIDER_NAMES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# TF32 off: on an H100 onnxruntime's default (TF32 matrix products) moved logits by up to
# 4e-3 from the CPU's at batch 64 (bench/cuda_check.py); served models must follow their
# equations in float32.
CUDA_OPTIONS: dict[str, Any] = {"device_id": 0, "use_tf32": 0}
# Graphs run once per call over a whole sequence: a 2,000-token prompt on the benchmark
# model took 41 ms with one thread and 33 ms with two (2 cores).
WHOLE_SEQUENCE = frozenset({"sequence", "encoder"})


@dataclass(frozen=True)
class ProviderChoice:
    """The execution providers (with options) every graph of the server runs on."""

    providers: tuple[tuple[str, dict[str, Any]], ...]
    intra_op_threads: int = 0
    spinning: bool = False
    # The graphs that take a whole sequence in one run (sequence, encoder).
    sequence_threads: int = 0
    # CUDA asked for without allow_cpu_fallback: a session that onnxruntime quietly put on
    # the CPU alone (CUDA or cuDNN libraries missing) is an error, not a slow success.
    required: str | None = None

    @classmethod
    def resolve(
        cls,
        provider: str,
        *,
        allow_cpu_fallback: bool,
        device_id: int = 0,
        intra_op_threads: int = 0,
        spinning: bool = False,
        sequence_threads: int = 0,
    ) -> ProviderChoice:
        """CPU, or CUDA with the CPU as onnxruntime's fallback for unsupported nodes.

        If CUDA is asked for but this onnxruntime build or machine has none: fail with
        a clear message, or (allow_cpu_fallback) warn and use the CPU.
        """
        cpu: tuple[str, dict[str, Any]] = ("CPUExecutionProvider", {})
        if provider == "cpu":
            return cls((cpu,), intra_op_threads, spinning, sequence_threads=sequence_threads)
        available = ort.get_available_providers()
        if _PROVIDER_NAMES[provider] in available:
            preload_cuda_libraries()
            cuda = ("CUDAExecutionProvider", {**CUDA_OPTIONS, "device_id": device_id})
            required = None if allow_cpu_fallback else cuda[0]
            return cls((cuda, cpu), intra_op_threads, spinning, sequence_threads, required)
        message = (
            f"provider={provider} was requested but onnxruntime offers only {available} "
            "(install onnxruntime-gpu with a matching CUDA runtime)"
        )
        if not allow_cpu_fallback:
            raise RuntimeError(message + "; set allow_cpu_fallback to run on the CPU instead")
        log.warning("%s; falling back to the CPU (allow_cpu_fallback is set)", message)
        return cls((cpu,), intra_op_threads, spinning, sequence_threads=sequence_threads)

    def session(
        self,
        model: str | bytes,
        *,
        whole_sequence: bool = False,
        initializers: Mapping[str, ort.OrtValue] | None = None,
        external_data: Path | None = None,
    ) -> ort.InferenceSession:
        """An onnxruntime session for one graph (a file, or a serialized model);
        ``whole_sequence`` graphs (one long run per call) get ``sequence_threads``, the
        others ``intra_op_threads``. ``initializers`` replace the graph's initializers of
        those names without a copy (the shared weights of its package). A serialized
        model's references to external data are checked against ``external_data`` (the
        package's directory; onnxruntime refuses them otherwise, even when
        ``initializers`` supply every one: it checks the file exists, it does not read it)."""
        options = ort.SessionOptions()
        for name, value in (initializers or {}).items():
            options.add_initializer(name, value)
        if external_data is not None:
            options.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", str(external_data)
            )
        threads = self.sequence_threads if whole_sequence else self.intra_op_threads
        if threads:
            options.intra_op_num_threads = threads
        if not self.spinning:
            # Idle intra-op threads spin for work by default: on a machine whose cores
            # the event loop (and often the clients) share, that spinning takes the CPU
            # the event loop needs; blocking costs a wake-up per run instead.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.log_severity_level = 3  # onnxruntime's own warnings go to its stderr otherwise
        session = ort.InferenceSession(
            model,
            sess_options=options,
            providers=[name for name, _ in self.providers],
            provider_options=[opts for _, opts in self.providers],
        )
        if self.required is not None and self.required not in session.get_providers():
            raise RuntimeError(
                f"{self.required} is installed but could not start (are the CUDA and cuDNN "
                f"libraries onnxruntime-gpu needs on the library path?); the session got only "
                f"{session.get_providers()}. Set allow_cpu_fallback to run on the CPU instead"
            )
        return session


def return_free_memory() -> None:
    """Give the heap memory freed while the sessions were built back to the system.

    onnxruntime folds the constants a native sequence graph derives from the shared
    weights through temporaries; glibc keeps the freed memory in the process (char-gru:
    8 MiB more resident per loaded model). Nothing happens without glibc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).malloc_trim(0)


def preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN from pip's nvidia-* packages (or torch's) where present, so
    ``pip install onnxruntime-gpu[cuda,cudnn]`` works without LD_LIBRARY_PATH
    (onnxruntime >= 1.21; best effort: libraries on the system path serve as well)."""
    preload = getattr(ort, "preload_dlls", None)
    if preload is None:
        return
    try:
        preload()
    except Exception as exc:  # any failure here shows up, clearer, when a session starts
        log.debug("onnxruntime.preload_dlls() failed: %s", exc)


class ModelRuntime:
    """The graphs of one package, each checked against the manifest when loaded.

    A graph's outputs (``logits`` [B, K] and/or ``values`` [B, R]) come back as one
    *output row* per session, [B, K + R] (the logits, then the values): what the
    batcher scatters and ``outputs`` splits again, whatever the model's output kind.
    """

    def __init__(self, package: ModelPackage, providers: ProviderChoice) -> None:
        self.package = package
        self._provider_choice = providers
        manifest = package.manifest
        # The state array of one session: its rows (every part's, e.g. an LSTM's h then c
        # rows) and width; "layers" and "hidden" in the pool's and the codec's terms.
        self.layers, self.hidden = manifest.state_shape
        self.output_size = manifest.output_size
        self.values_size = manifest.output.values
        self.input_name = manifest.signature("step")[0][0]  # tokens or inputs
        self.input_size = manifest.input.size  # n_x of a vectors input, 0 for tokens
        self._graphs: dict[str, ort.InferenceSession] = {}
        # Read once; every graph's session uses the same buffers (kept alive here).
        self.weights = load_shared_weights(package)
        for kind in manifest.graphs:
            try:
                session = providers.session(
                    str(package.graph_path(kind)),
                    whole_sequence=kind in WHOLE_SEQUENCE,
                    initializers=self.weights.of(kind),
                )
            except Exception as exc:  # onnxruntime raises its own exception types
                raise PackageError(
                    f"{package.path}: onnxruntime cannot load the {kind} graph: {exc}"
                ) from None
            self._check_signature(kind, session)
            self._graphs[kind] = session
        self.providers = tuple(self._graphs["step"].get_providers())
        self._start_token = (
            None
            if manifest.initial_state.token is None
            else package.vocabulary.special_tokens[manifest.initial_state.token]
        )
        start = self.zeros(1) if package.initial_state is None else package.initial_state[:, None]
        self.initial_state = self._after_start_token(start)[:, 0, :]
        self._run_seconds, self._row_seconds = self._measure(
            lambda rows: self.step(self.blank_inputs(rows), self.zeros(rows))
        )
        # The lone session's step: the binding, its input and state, its outputs.
        self._lone: tuple[Any, Inputs, FloatArray, list[FloatArray], FloatArray] | None = None
        self._generation: dict[int, GenerationGraph | None] = {}
        self._generation_lock = threading.Lock()
        self._chunk_seconds: dict[int, tuple[float, float]] = {}
        return_free_memory()

    @staticmethod
    def _measure(run: Any) -> tuple[float, float]:
        """A graph run's fixed cost and its cost per row, in seconds, from the best of
        three runs (``run(rows)``) at batch 1 and at batch 8 (after one to warm up)."""
        times = {}
        for rows in (1, 8):
            run(rows)
            best = float("inf")
            for _ in range(3):
                started = time.perf_counter()
                run(rows)
                best = min(best, time.perf_counter() - started)
            times[rows] = best
        per_row = max(0.0, (times[8] - times[1]) / 7)
        return max(0.0, times[1] - per_row), per_row

    def step_seconds(self, rows: int) -> float:
        """The expected time of a step-graph run of ``rows`` rows (on an idle machine)."""
        return self._run_seconds + rows * self._row_seconds

    def chunk_seconds(self, steps: int, rows: int) -> float:
        """The expected time of a generation-graph run (``generation_graph(steps)``)."""
        fixed, per_row = self._chunk_seconds.get(steps, (0.0, 0.0))
        return fixed + rows * per_row

    def generation_graph(self, steps: int) -> GenerationGraph | None:
        """The package's generation graph of ``steps`` steps (gengraph), built and
        checked on first use (seconds: call it off the event loop); None where the step
        graph cannot be unrolled or the unrolled graph disagrees with it (logged), and
        for a model whose output is not a vocabulary."""
        with self._generation_lock:
            if steps not in self._generation:
                self._generation[steps] = self._build_generation(steps)
            return self._generation[steps]

    def _build_generation(self, steps: int) -> GenerationGraph | None:
        if self.package.manifest.output.kind != "vocabulary":
            return None
        where = self.package.graph_path("step")
        try:
            # The unrolled copies read the step graph's weights by name: its sessions get
            # the same shared buffers as the step graph's (no copy of the weights file).
            graph = GenerationGraph.build(
                str(where),
                steps,
                self.output_size,
                lambda model: self._provider_choice.session(
                    model, initializers=self.weights.of("step"), external_data=where.parent
                ),
            )
            verify(graph, self.step, self.layers, self.hidden)
        except Exception as exc:  # onnx and onnxruntime raise their own types
            reason = str(exc) if isinstance(exc, Unsupported) else f"{type(exc).__name__}: {exc}"
            log.warning(
                "%s: no generation graph (Generate feeds token by token): %s", where, reason
            )
            return None
        self._chunk_seconds[steps] = self._measure(
            lambda rows: graph.run(
                np.zeros(rows, dtype=np.int64), self.zeros(rows), np.zeros((rows, steps)),
                np.ones(rows),
            )
        )  # fmt: skip
        return_free_memory()  # the temporaries of folding the unrolled graph's constants
        return graph

    def has(self, kind: str) -> bool:
        return kind in self._graphs

    def blank_inputs(self, rows: int) -> np.ndarray[Any, Any]:
        """Inputs for ``rows`` rows (token 0, or zero vectors), to warm a graph up."""
        size = self.package.manifest.input.size
        if size:
            return np.zeros((rows, size), dtype=np.float32)
        return np.zeros(rows, dtype=np.int64)

    # ------------------------------------------------------------------ checks

    def _check_signature(self, kind: str, session: ort.InferenceSession) -> None:
        """Every input and output has the name, type and shape the manifest implies."""
        manifest = self.package.manifest
        L, H, K = self.layers, self.hidden, self.output_size
        R, X = manifest.output.values, manifest.input.size
        whole = kind in ("sequence", "encoder")  # a [B, T] sequence per row
        steps: tuple[None, ...] = (None,) if whole else ()
        state = ("tensor(float)", (L, None, H))
        int_batch = ("tensor(int64)", (None,))
        expected: dict[str, tuple[str, tuple[int | None, ...]]] = {
            "tokens": ("tensor(int64)", (None, *steps)),
            "inputs": ("tensor(float)", (None, *steps, X)),
            "lengths": int_batch,
            "condition": int_batch,
            "state": state,
            "state_out": state,
            "logits": ("tensor(float)", (None, K)),
            "values": ("tensor(float)", (None, R)),
        }
        where = f"{self.package.graph_path(kind)}"
        for declared, actual in zip(
            manifest.signature(kind), (session.get_inputs(), session.get_outputs()), strict=True
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
                        f"{dtype}{['dynamic' if d is None else d for d in shape]} "
                        f"(state rows={L}, width={H}, outputs={K}, values={R}, input size={X} "
                        "from the manifest)"
                    )

    # ------------------------------------------------------------------ initial states

    def zeros(self, batch: int) -> FloatArray:
        return np.zeros((self.layers, batch, self.hidden), dtype=np.float32)

    def _after_start_token(self, state: FloatArray) -> FloatArray:
        if self._start_token is None:
            return state
        tokens = np.full(state.shape[1], self._start_token, dtype=np.int64)
        return self.step(tokens, state)[1]

    def encode(self, source: IntArray) -> FloatArray:
        """A seq2seq session's initial state from its source tokens [T]: [L, H]."""
        (state,) = self._graphs["encoder"].run(
            None,
            {"tokens": source.reshape(1, -1), "lengths": np.array([len(source)], np.int64)},
        )
        return self._after_start_token(state)[:, 0, :]

    def condition(self, index: int) -> FloatArray:
        """A conditional generator's initial state for one condition: [L, H]."""
        (state,) = self._graphs["condition"].run(
            None, {"condition": np.array([index], dtype=np.int64)}
        )
        return self._after_start_token(state)[:, 0, :]

    # ------------------------------------------------------------------ inference

    @staticmethod
    def _rows(outputs: list[FloatArray]) -> FloatArray:
        """A graph's logits and/or values as one output row per session, [B, K + R]."""
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=1)

    def step(self, inputs: Inputs, state: FloatArray) -> tuple[FloatArray, FloatArray]:
        """One step for a batch: inputs [B] (ids) or [B, n_x] (vectors), state [S,B,W]
        -> output rows [B, K+R], state [S,B,W]."""
        *outputs, new_state = self._graphs["step"].run(
            None, {self.input_name: inputs, "state": state}
        )
        return self._rows(outputs), new_state

    def step_one(self, given: Any, state: FloatArray) -> tuple[FloatArray, FloatArray]:
        """One step of one session's state [S, W] for one input (a token id or a
        vector): its output row [1, K+R] and state_out [S, 1, W], in buffers bound to the
        graph once (no feed dictionary, no allocation but where logits and values are
        joined), valid until the next call; for the event loop thread alone (the lone
        session's path)."""
        graph = self._graphs["step"]
        if self._lone is None:
            binding = graph.io_binding()
            inputs = self.blank_inputs(1)
            state_in, state_out = self.zeros(1), self.zeros(1)
            binding.bind_cpu_input(self.input_name, inputs)
            binding.bind_cpu_input("state", state_in)
            outputs: list[FloatArray] = []
            for arg in graph.get_outputs():
                if arg.name == "state_out":
                    array = state_out
                else:
                    width = self.output_size if arg.name == "logits" else self.values_size
                    array = np.zeros((1, width), dtype=np.float32)
                    outputs.append(array)
                binding.bind_output(
                    arg.name, "cpu", 0, np.float32, list(array.shape), array.ctypes.data
                )
            self._lone = binding, inputs, state_in, outputs, state_out
        binding, inputs, state_in, outputs, state_out = self._lone
        inputs[0] = given
        state_in[:, 0, :] = state
        graph.run_with_iobinding(binding)
        return self._rows(outputs), state_out

    def run_inputs(self, inputs: Inputs, state: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Feed a sequence (ids [T] or vectors [T, n_x]) to one session's state [S,1,W];
        the output row after the last input, [1, K+R], and the state.

        One run of the sequence graph where the package has one, else the step graph
        input by input (in this one call, so the caller pays one thread hop).
        """
        sequence = self._graphs.get("sequence")
        if sequence is not None:
            *outputs, state = sequence.run(
                None,
                {
                    self.input_name: inputs[None],
                    "lengths": np.array([len(inputs)], dtype=np.int64),
                    "state": state,
                },
            )
            return self._rows(outputs), state
        rows: FloatArray | None = None
        for x in inputs:
            rows, state = self.step(x[None], state)
        assert rows is not None, "run_inputs needs at least one input"
        return rows, state

    def head(self, state: FloatArray) -> FloatArray:
        """The output row for the current state, without feeding anything: [S,B,W] ->
        [B, K+R]. FAILED_PRECONDITION for a package without a head graph."""
        graph = self._graphs.get("head")
        if graph is None:
            raise FailedPrecondition(
                f"model {self.package.manifest.name} has no head graph: its output exists "
                "only after an input (give one)"
            )
        return self._rows(graph.run(None, {"state": state}))
