"""``package_torch``: a PyTorch module of the user's, as a model package.

The module is read (``adapters``: the common stack, or a module with ``step``), its
graphs are written, and the package is published only if the gate passes:

* the common stack becomes an ``RNNLanguageModel`` of the known cell with the same
  weights, exported and checked like a zoo model (numpy equations == torch ==
  onnxruntime, ``parity.check_parity``); then the served step graph, fed back
  ``steps`` times, must give what the module's own ``forward`` gives on the same inputs;
* a step module's step graph, fed back ``steps`` times, must give what its own
  ``step`` gives (outputs and state, step by step), and each single step from the
  module's state must agree to 1e-5.

A refusal (``PackagingError``) names the first disagreeing step and the size of the
difference.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import Tensor, nn

from rnnserve_server.manifest import (
    InitialStateSpec,
    InputSpec,
    Manifest,
    OutputSpec,
    StateSpec,
    cell_state,
    standard_graph,
)
from rnnserve_server.tokenizer import DEFAULT_SPECIAL_TEXT, Tokenizer
from rnnserve_train import graphs, sharing
from rnnserve_train.adapters import (
    HeadGraph,
    StackModule,
    StepGraph,
    StepModule,
    UnsupportedModule,
    check_batch,
    read_stack,
)
from rnnserve_train.export import (
    CARD_FILE,
    VOCAB_FILE,
    WEIGHTS_FILE,
    export_graphs,
    staged_package,
    store_parameters,
    tokenizer_spec,
)
from rnnserve_train.parity import ParityError, Start, check_parity

log = logging.getLogger(__name__)

GATE_STEPS = 200
GATE_BATCH = 3
# Free-running, both in float32 with the state fed back: rounding alone stays orders of
# magnitude below this; a module whose export differs is off by far more from step 0.
GATE_TOLERANCE = 1e-3
STEP_TOLERANCE = 1e-5  # one step from the same state
INITIAL_STATE_FILE = "initial_state.npy"


class PackagingError(RuntimeError):
    """The module cannot be packaged, or its package would not compute what it does."""


@dataclass(frozen=True)
class GateReport:
    steps: int
    batch: int
    max_abs_diff: dict[str, float]


def package_torch(
    model: nn.Module,
    out_dir: Path | str,
    *,
    name: str,
    version: int = 1,
    vocabulary: Sequence[str] | Tokenizer | None = None,
    input_size: int | None = None,
    labels: Sequence[str] | None = None,
    example_inputs: Tensor | None = None,
    output: str | None = None,
    shape: str | None = None,
    start_token: str | None = None,
    tokenizer: str = "word",
    special_tokens: Mapping[str, int] | None = None,
    lowercase: bool = False,
    description: str = "",
    cell_bound: float | None = None,
    steps: int = GATE_STEPS,
    training: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | None = None,
) -> Path:
    """Write ``model`` as the package ``<out_dir>/<name>/<version>``; return its path.

    Give ``vocabulary`` (the tokens in id order, or a ``Tokenizer``) for a model that
    reads token ids, or ``input_size`` for one that reads float vectors of that size.
    The output is ``labels`` (softmax; ``output="sigmoid"`` for one sigmoid each) when
    labels are given, the next token when the module's output has one entry per token,
    and a real vector (regression) otherwise, or ``output`` says which. ``shape`` is the
    task shape of docs/MODELS.md (by default many-to-one for labels, many-to-many
    otherwise). ``start_token`` (e.g. ``"bos"``) starts every session from the state
    after that special token. ``example_inputs`` ([B, T] token ids or [B, T, n_x]
    vectors, batch first) are what the gate feeds (default: seeded random inputs, and
    for a next-token model its own greedy choices). ``cell_bound``, if given, is a
    bound of an LSTM's c stated in the manifest (without one, the server's setting
    max_unbounded_state bounds imported c). Raises ``UnsupportedModule`` for a module of
    another shape (a bidirectional one, say) and ``PackagingError`` when the gate fails.
    """
    model = model.cpu().eval()
    vocab = _tokenizer(vocabulary, input_size, tokenizer, special_tokens, lowercase)
    adapter: StackModule | StepModule = (
        StepModule(model) if callable(getattr(model, "step", None)) else read_stack(model)
    )
    width = _output_width(adapter, vocab, input_size, example_inputs)
    output_spec = _output_spec(output, labels, vocab, width)
    if start_token is not None and (vocab is None or start_token not in vocab.special_tokens):
        raise PackagingError(
            f"start_token={start_token!r} is not a special token of the vocabulary"
        )
    initial = InitialStateSpec(kind="zeros")
    if start_token is not None:
        initial = InitialStateSpec(kind="after_token", token=start_token)
    input_spec = (
        InputSpec("tokens") if vocab is not None else InputSpec("vectors", int(input_size or 0))
    )
    task_shape = shape or (
        "many-to-one" if output_spec.kind in ("labels", "sigmoid") else "many-to-many"
    )
    probe = _probe_inputs(vocab, input_size, example_inputs, steps)
    with staged_package(Path(out_dir), name, version) as staged:
        directory = staged.path
        if vocab is not None:
            vocab.save(directory / VOCAB_FILE)
        if isinstance(adapter, StackModule):
            cell, state, files, report = _write_stack(
                adapter,
                vocab=vocab,
                directory=directory,
                output=output_spec,
                initial=initial,
                probe=probe,
                cell_bound=cell_bound,
                steps=steps,
            )
        else:
            cell, state, files = (
                "custom",
                adapter.state_spec,
                _write_step_module(adapter, directory, probe[:, :1]),
            )
            start = adapter.initial()
            if bool(torch.any(start != 0)):
                np.save(directory / INITIAL_STATE_FILE, start.numpy().astype(np.float32))
                if start_token is not None:
                    raise PackagingError(
                        "start_token: a step module starts from its initial_state()"
                    )
                initial = InitialStateSpec(kind="constant", file=INITIAL_STATE_FILE)
            report = _gate_step_module(
                adapter, files=files, output=output_spec, vocab=vocab, probe=probe, steps=steps
            )
            # The module's tensors once, named by its state_dict where they are one of
            # its entries; what the exporter folded of its own is stored too.
            sharing.share_weights(
                files.values(), _state_dict_arrays(model), directory / WEIGHTS_FILE, strict=False
            )
        if output_spec.kind == "regression":
            for path in files.values():
                _rename_output(path, "logits", "values")
        layers, hidden = (
            (adapter.recurrent.num_layers, adapter.recurrent.hidden_size)
            if isinstance(adapter, StackModule)
            else (state.rows, state.width)
        )
        manifest = Manifest(
            name=name,
            version=int(directory.name),
            description=description or f"{type(model).__name__} (packaged with package_torch)",
            shape=task_shape,
            cell=cell,
            layers=layers,
            hidden_size=hidden,
            tokenizer=None if vocab is None else tokenizer_spec(vocab),
            output=output_spec,
            graphs={
                kind: standard_graph(kind, path.name, input_spec, output_spec)
                for kind, path in files.items()
            },
            initial_state=initial,
            input=input_spec,
            state=state,
            weights_file=WEIGHTS_FILE,
            card_file=CARD_FILE,
            training={
                **(training or {}),
                "packaged_from": f"{type(model).__module__}.{type(model).__qualname__}",
                "gate": {
                    "steps": report.steps,
                    "batch": report.batch,
                    "max_abs_diff": report.max_abs_diff,
                },
            },
            metrics=dict(metrics or {}),
        )
        manifest.write(directory)
        _write_card(directory / CARD_FILE, manifest, model, adapter, report)
    log.info("packaged %s (gate max abs diff %s)", staged.final, report.max_abs_diff)
    return staged.final


# ---------------------------------------------------------------------- what the module is


def _tokenizer(
    vocabulary: Sequence[str] | Tokenizer | None,
    input_size: int | None,
    kind: str,
    special_tokens: Mapping[str, int] | None,
    lowercase: bool,
) -> Tokenizer | None:
    if (vocabulary is None) == (input_size is None):
        raise PackagingError(
            "give vocabulary= (the tokens of a model that reads token ids) or input_size= "
            "(the size of the float vectors it reads), exactly one"
        )
    if vocabulary is None:
        if input_size is not None and input_size < 1:
            raise PackagingError(f"input_size={input_size} must be at least 1")
        return None
    if isinstance(vocabulary, Tokenizer):
        return vocabulary
    tokens = tuple(vocabulary)
    if special_tokens is None:  # the usual written forms, where the vocabulary has them
        special_tokens = {
            role: tokens.index(text)
            for role, text in DEFAULT_SPECIAL_TEXT.items()
            if text in tokens
        }
    try:
        return Tokenizer(
            kind=kind, tokens=tokens, special_tokens=dict(special_tokens), lowercase=lowercase
        )
    except ValueError as exc:
        raise PackagingError(f"vocabulary: {exc}") from None


def _output_width(
    adapter: StackModule | StepModule,
    vocab: Tokenizer | None,
    input_size: int | None,
    example_inputs: Tensor | None,
) -> int:
    """K, the width of the module's output at one step."""
    if isinstance(adapter, StackModule):
        if vocab is None and not adapter.reads_tokens and input_size is not None:
            expected = (
                adapter.input_layer.in_features
                if isinstance(adapter.input_layer, nn.Linear)
                else adapter.recurrent.input_size
            )
            if expected != input_size:
                raise PackagingError(
                    f"input_size={input_size}, but the module reads {expected} floats"
                )
        if vocab is not None and not adapter.reads_tokens and adapter.input_layer is not None:
            raise PackagingError(
                "a vocabulary was given, but the module's input layer is not an nn.Embedding"
            )
        if vocab is None and adapter.reads_tokens:
            raise PackagingError(
                "the module starts with an nn.Embedding: give vocabulary=, not input_size="
            )
        return (
            adapter.head.out_features if adapter.head is not None else adapter.recurrent.hidden_size
        )
    inputs = _probe_inputs(vocab, input_size, example_inputs, 1)[:, 0]
    with torch.no_grad():
        outputs, _ = adapter.user.step(inputs, adapter.user.initial_state(inputs.shape[0]))
    check_batch(outputs, inputs.shape[0], f"{adapter.name}.step")
    return int(outputs.shape[1])


def _output_spec(
    output: str | None, labels: Sequence[str] | None, vocab: Tokenizer | None, width: int
) -> OutputSpec:
    if output is None:
        if labels:
            output = "labels"
        elif vocab is not None and width == vocab.size:
            output = "vocabulary"
        else:
            output = "regression"
    if output in ("labels", "sigmoid"):
        if not labels or len(labels) != width:
            raise PackagingError(
                f"output={output!r} needs labels= naming the module's {width} outputs "
                f"(got {len(labels or ())})"
            )
        return OutputSpec(kind=output, labels=tuple(labels))
    if labels:
        raise PackagingError(f"labels= is for a labels or sigmoid output, not {output!r}")
    if output == "vocabulary":
        if vocab is None or width != vocab.size:
            raise PackagingError(
                f"output='vocabulary' needs one output per token: the module has {width}, "
                f"the vocabulary {vocab.size if vocab else 0}"
            )
        return OutputSpec(kind="vocabulary")
    if output == "regression":
        return OutputSpec(kind="regression", values=width)
    raise PackagingError(f"output={output!r} is not vocabulary, labels, sigmoid or regression")


def _probe_inputs(
    vocab: Tokenizer | None, input_size: int | None, example: Tensor | None, steps: int
) -> Tensor:
    """The gate's inputs, batch first: [B, steps] token ids or [B, steps, n_x] vectors."""
    if example is not None:
        expected_dims = 2 if vocab is not None else 3
        if example.dim() != expected_dims or example.shape[1] < steps:
            raise PackagingError(
                f"example_inputs: shape {list(example.shape)}; expected [B, T >= {steps}"
                + ("]" if vocab is not None else f", {input_size}]")
            )
        return example[:, :steps].to(torch.int64 if vocab is not None else torch.float32)
    generator = torch.Generator().manual_seed(20261127)
    if vocab is not None:
        return torch.randint(0, vocab.size, (GATE_BATCH, steps), generator=generator)
    return torch.randn(GATE_BATCH, steps, int(input_size or 0), generator=generator)


# ---------------------------------------------------------------------- the common stack


def _write_stack(
    adapter: StackModule,
    *,
    vocab: Tokenizer | None,
    directory: Path,
    output: OutputSpec,
    initial: InitialStateSpec,
    probe: Tensor,
    cell_bound: float | None,
    steps: int,
) -> tuple[str, StateSpec, dict[str, Path], GateReport]:
    ours = adapter.to_model(vocab.size if vocab is not None else 0)
    weights = ours.to_seed_weights()
    files = export_graphs(ours, directory, "native")
    store_parameters(ours, files.values(), directory / WEIGHTS_FILE)
    token = None if initial.token is None or vocab is None else vocab.special_tokens[initial.token]
    try:
        parity = check_parity(
            ours, weights, files, Start(kind=initial.kind, token=token), steps=steps
        )
    except ParityError as exc:
        raise PackagingError(
            f"the exported graphs do not follow the {adapter.cell} equations: {exc}"
        ) from None
    served = _OnnxStep(files["step"], graphs.input_name(ours))
    inputs = probe if vocab is None or output.kind != "vocabulary" else None
    fed, outputs = served.run(ours.zero_state(probe.shape[0]).numpy(), inputs, token, probe, steps)
    given = torch.from_numpy(fed)
    if token is not None:  # the module's forward sees the start token first
        given = torch.cat([torch.full((given.shape[0], 1), token), given], dim=1)
    with torch.no_grad():
        expected = adapter.forward_outputs(given).numpy()
    if token is not None:
        expected = expected[:, 1:]
    gain = float(np.abs(weights["W_ya"]).sum(axis=1).max())
    diff = _first_difference(
        outputs, expected, GATE_TOLERANCE * (1 + gain), f"{type(adapter.module).__name__}.forward"
    )
    report = GateReport(steps, probe.shape[0], {**parity.max_abs_diff, "module forward": diff})
    state = cell_state(ours.cell_name, ours.layers, ours.hidden_size, cell_bound=cell_bound)
    return ours.cell_name, state, files, report


class _OnnxStep:
    """The written step graph on onnxruntime, fed back step after step."""

    def __init__(self, path: Path, input_name: str) -> None:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = input_name

    def __call__(self, inputs: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        outputs, new_state = self.session.run(None, {self.input_name: inputs, "state": state})
        return outputs, new_state

    def run(
        self,
        state: np.ndarray,
        inputs: Tensor | None,
        start_token: int | None,
        probe: Tensor,
        steps: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """``steps`` steps from ``state`` (after ``start_token`` if set): of ``inputs``
        [B, T(, n_x)], or (None) of its own greedy tokens, each row's first forced to
        ``probe``'s. Returns (the inputs fed, the outputs [B, steps, K])."""
        if start_token is not None:
            _, state = self(np.full(state.shape[1], start_token, np.int64), state)
        fed, outputs = [], []
        chosen = probe[:, 0].numpy()
        for t in range(steps):
            if inputs is not None:
                chosen = inputs[:, t].numpy()
            out, state = self(chosen, state)
            fed.append(chosen)
            outputs.append(out)
            if inputs is None:
                chosen = np.argmax(out, axis=-1).astype(np.int64)
        return np.stack(fed, axis=1), np.stack(outputs, axis=1)


def _first_difference(ours: np.ndarray, theirs: np.ndarray, tolerance: float, what: str) -> float:
    """Max abs difference of [B, T, ...] outputs; PackagingError naming the first step
    where they differ by more than ``tolerance``."""
    if ours.shape != theirs.shape:
        raise PackagingError(
            f"the served graphs give outputs of shape {list(ours.shape)}, {what} "
            f"{list(theirs.shape)} (batch, steps, outputs)"
        )
    error = np.abs(ours.astype(np.float64) - theirs.astype(np.float64))
    per_step = error.reshape(error.shape[0], error.shape[1], -1).max(axis=(0, 2))
    bad = np.flatnonzero(~(per_step <= tolerance))
    if len(bad):
        t = int(bad[0])
        raise PackagingError(
            f"the served graphs and {what} differ by {per_step[t]:.3g} at step {t} "
            f"(tolerance {tolerance:.3g}): the module computes something its export does "
            "not (an operation outside the supported shape of module?), so it is not packaged"
        )
    return float(per_step.max()) if len(per_step) else 0.0


# ---------------------------------------------------------------------- step modules


def _write_step_module(adapter: StepModule, directory: Path, example: Tensor) -> dict[str, Path]:
    """The step graph (and the head graph if the module has ``head``)."""
    x = "tokens" if example.dtype == torch.int64 else "inputs"
    inputs = example[:, 0]
    state = adapter.pack(adapter.user.initial_state(inputs.shape[0]))
    files = {"step": directory / "step.onnx"}
    graphs.trace(
        StepGraph(adapter),
        (inputs, state),
        files["step"],
        inputs=[x, "state"],
        outputs=["logits", "state_out"],
        batch_dims={x: 0, "state": 1, "logits": 0, "state_out": 1},
    )
    if adapter.has_head:
        files["head"] = directory / "head.onnx"
        graphs.trace(
            HeadGraph(adapter),
            (state,),
            files["head"],
            inputs=["state"],
            outputs=["logits"],
            batch_dims={"state": 1, "logits": 0},
        )
    return files


def _gate_step_module(
    adapter: StepModule,
    *,
    files: Mapping[str, Path],
    output: OutputSpec,
    vocab: Tokenizer | None,
    probe: Tensor,
    steps: int,
) -> GateReport:
    """The module's own step() and the step graph, each fed back its own state."""
    where = f"{adapter.name}.step"
    served = _OnnxStep(files["step"], "tokens" if vocab is not None else "inputs")
    greedy = vocab is not None and output.kind == "vocabulary"
    batch = probe.shape[0]
    with torch.no_grad():
        state = adapter.user.initial_state(batch)
        packed = adapter.pack(state).numpy()
        chosen = probe[:, 0]
        torch_out, onnx_out, torch_states, onnx_states, single = [], [], [], [], 0.0
        for t in range(steps):
            if not greedy:
                chosen = probe[:, t]
            one_step, _ = served(chosen.numpy(), adapter.pack(state).numpy())
            y, state = adapter.user.step(chosen, state)
            check_batch(y, batch, where)
            single = max(single, _single_step(one_step, y.numpy(), t, where))
            served_y, packed = served(chosen.numpy(), packed)
            torch_out.append(y.numpy())
            onnx_out.append(served_y)
            torch_states.append(adapter.pack(state).numpy())
            onnx_states.append(packed)
            if greedy:
                chosen = torch.from_numpy(np.argmax(served_y, axis=-1).astype(np.int64))
    outputs = _first_difference(
        np.stack(onnx_out, 1), np.stack(torch_out, 1), GATE_TOLERANCE, where + " (outputs)"
    )
    states = _first_difference(
        np.stack(onnx_states, 2), np.stack(torch_states, 2), GATE_TOLERANCE, where + " (state)"
    )
    if "head" in files:
        head = ort.InferenceSession(str(files["head"]), providers=["CPUExecutionProvider"])
        (served_head,) = head.run(None, {"state": packed})
        with torch.no_grad():
            expected = adapter.user.head(adapter.unpack(torch.from_numpy(packed))).numpy()
        _first_difference(
            served_head[:, None], expected[:, None], GATE_TOLERANCE, f"{adapter.name}.head"
        )
    return GateReport(steps, batch, {"one step": single, "outputs": outputs, "state": states})


def _single_step(served: np.ndarray, expected: np.ndarray, t: int, where: str) -> float:
    diff = float(np.abs(served - expected).max())
    allowed = STEP_TOLERANCE * (1 + float(np.abs(expected).max()))
    if not diff <= allowed:
        raise PackagingError(
            f"the served step graph and {where} differ by {diff:.3g} at step {t} from the same "
            f"state (tolerance {allowed:.3g}): its export does not compute what it does"
        )
    return diff


def _state_dict_arrays(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}


def _rename_output(path: Path, old: str, new: str) -> None:
    """Rename a graph output (and every reference to it) in an ONNX file (its
    references to the weights file kept as they are)."""
    model = onnx.load(str(path), load_external_data=False)
    for value in model.graph.output:
        if value.name == old:
            value.name = new
    for node in model.graph.node:
        node.output[:] = [new if n == old else n for n in node.output]
        node.input[:] = [new if n == old else n for n in node.input]
    onnx.save(model, str(path))


def _write_card(
    path: Path,
    manifest: Manifest,
    model: nn.Module,
    adapter: StackModule | StepModule,
    report: GateReport,
) -> None:
    if isinstance(adapter, StackModule):
        rnn = adapter.recurrent
        what = (
            f"the common stack: {type(rnn).__name__} ({rnn.num_layers} layer(s) of "
            f"{rnn.hidden_size}, batch_first={rnn.batch_first}), served as the "
            f"`{manifest.cell}` cell of docs/MODELS.md"
        )
    else:
        what = "a step module (step() and initial_state()), served as its traced step graph"
    parts = ", ".join(f"{p.name} x{p.rows}" for p in manifest.state_layout.parts)
    lines = [
        f"# {manifest.name} v{manifest.version}",
        "",
        manifest.description + ".",
        "",
        "## Model",
        f"- `{type(model).__module__}.{type(model).__qualname__}`: {what}",
        f"- {sum(p.numel() for p in model.parameters()):,} parameters; input "
        f"{manifest.input.kind}"
        + (f" of {manifest.input.size}" if manifest.input.size else "")
        + f"; output {manifest.output.kind}; state [{manifest.state_shape[0]}, "
        f"{manifest.state_shape[1]}] ({parts})",
        "",
        "## Gate (checked when packaged)",
        f"- {report.steps} steps fed back, batch {report.batch}; max abs diff "
        + ", ".join(f"{k} {v:.2g}" for k, v in report.max_abs_diff.items()),
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")


__all__ = ["PackagingError", "UnsupportedModule", "package_torch"]
