"""The model package's manifest (``manifest.json``): the format's fields, kinds and graph
signatures, parsed and checked field by field (docs/model-package.md). Reading the
package's other files is ``modelpackage``'s.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rnnserve_server.jsonfields import FieldReader
from rnnserve_server.tokenizer import NORMALIZATIONS, SPECIAL_ROLES, TOKENIZER_KINDS

# 3: format 2's manifest, the graphs sharing one weights file (ONNX external data). 2
# (input kinds, named state parts, regression values) and 1 (none of those) still load:
# each of their graphs holds its own weights, and weights_file is an .npz.
FORMAT_VERSION = 3
SHARED_WEIGHTS_FORMAT = 3  # the first format whose weights file the graphs reference
MANIFEST_FILE = "manifest.json"
SHAPES = ("one-to-one", "one-to-many", "many-to-one", "many-to-many", "seq2seq")
# ``custom``: a step graph whose equations are the package's own (a user's step() module).
CELLS = ("rnn-tanh", "rnn-relu", "gru-simple", "gru", "gru-torch", "lstm", "custom")
INPUT_KINDS = ("tokens", "vectors")
OUTPUT_KINDS = ("vocabulary", "labels", "sigmoid", "regression")
INITIAL_STATE_KINDS = ("zeros", "after_token", "encoder", "condition", "constant")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
# A state part's name: also the name of its tensor in exported state (statecodec).
STATE_PART_NAME = re.compile(r"[a-z][a-z0-9_]{0,15}")  # matched whole (fullmatch)
# Cells whose activation stays in [-1, 1] from a state in [-1, 1]: |h| <= 1. A ReLU's
# activations and an LSTM's c (which grows by up to 1 a step: |f| <= 1, |i * g| <= 1)
# have no bound of their own: theirs is the server's setting max_unbounded_state.
BOUNDED_CELLS = ("rnn-tanh", "gru-simple", "gru", "gru-torch", "lstm")

# Input and output names of each graph kind, in order (``graph_signature``); part of the
# format. X is ``tokens`` (int64 [B], [B,T] in sequence graphs) or ``inputs`` (float32
# [B,n_x], [B,T,n_x]); the outputs are ``logits`` [B,K] unless output.kind is
# ``regression``, then ``values`` [B,R] if output.values > 0.
#   step:      X, state f32 [S,B,W] -> outputs, state_out [S,B,W]
#   head:      state [S,B,W] -> outputs (for the current state, nothing fed)
#   sequence:  X [B,T], lengths int64 [B] (1..T), state [S,B,W]
#                -> outputs after each row's last step, state_out after it
#   encoder:   tokens int64 [B,T], lengths int64 [B] -> state [S,B,W] (a decoder's start)
#   condition: condition int64 [B] (index into manifest.conditions) -> state [S,B,W]
GRAPH_KINDS = ("step", "head", "sequence", "encoder", "condition")
# Format 1's signatures (token inputs, logits): still what most packages have.
GRAPH_SIGNATURES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "step": (("tokens", "state"), ("logits", "state_out")),
    "head": (("state",), ("logits",)),
    "sequence": (("tokens", "lengths", "state"), ("logits", "state_out")),
    "encoder": (("tokens", "lengths"), ("state",)),
    "condition": (("condition",), ("state",)),
}
REQUIRED_GRAPHS = ("step",)


class PackageError(ValueError):
    """A model package that cannot be served; the message names the file and the field."""


@dataclass(frozen=True)
class TokenizerSpec:
    kind: str
    vocabulary_file: str
    size: int
    special_tokens: dict[str, int]
    normalize: str = "NFC"
    lowercase: bool = False


@dataclass(frozen=True)
class InputSpec:
    """What a step reads: a token id (``tokens``, the tokenizer's vocabulary) or a
    vector of ``size`` floats (``vectors``: sensor readings, audio frames, ...)."""

    kind: str = "tokens"
    size: int = 0  # n_x of a vectors input; 0 for tokens


@dataclass(frozen=True)
class OutputSpec:
    """The output head: softmax over the vocabulary or over labels, sigmoids, or a
    real vector alone (``regression``); ``values`` > 0 adds (or, for ``regression``,
    is) a real output vector of that size beside the labels' logits."""

    kind: str
    labels: tuple[str, ...] = ()
    values: int = 0


@dataclass(frozen=True)
class StatePart:
    """Consecutive rows of the state array: their name (``h``, ``c``, a custom
    module's own), how many, and the bound |x| <= bound every value meets (None: none
    of its own, so the server's setting max_unbounded_state bounds it). Imported states
    and shared-store records are checked against it (``state_violation``)."""

    name: str
    rows: int
    bound: float | None


@dataclass(frozen=True)
class StateSpec:
    """A session's state: one float32 array [rows, width], ``parts`` naming its rows in
    order (for the known cells: ``h`` of every layer, first layer first; for ``lstm``
    then ``c`` of every layer). A part narrower than ``width`` is zero-padded."""

    width: int
    parts: tuple[StatePart, ...]

    @property
    def rows(self) -> int:
        return sum(part.rows for part in self.parts)


def cell_state(
    cell: str, layers: int, hidden_size: int, *, cell_bound: float | None = None
) -> StateSpec:
    """The state layout of a known cell: [layers, hidden] of ``h`` (and for ``lstm`` as
    many rows of ``c`` after them, bounded by ``cell_bound`` if the package states one)."""
    h = StatePart("h", layers, 1.0 if cell in BOUNDED_CELLS else None)
    parts = (h, StatePart("c", layers, cell_bound)) if cell == "lstm" else (h,)
    return StateSpec(width=hidden_size, parts=parts)


@dataclass(frozen=True)
class InitialStateSpec:
    """How a new session's state is made.

    ``zeros``: every layer's state is 0. ``after_token``: the state after feeding the
    special token ``token`` (e.g. ``bos`` for a language model trained on documents that
    start with it) to a zero state. ``encoder``: the encoder graph's state for the
    source the caller gives, then ``token`` (if set, e.g. ``bos``) fed to it.
    ``condition``: the condition graph's state for the condition the caller names, then
    ``token`` (if set). ``constant``: the state stored in ``file`` (a float32 .npy
    [S, W]; e.g. a custom module's learned initial state). The step count starts at 0
    in every case.
    """

    kind: str = "zeros"
    token: str | None = None
    file: str | None = None  # kind constant: the .npy of the state [S, W]


@dataclass(frozen=True)
class GraphSpec:
    file: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class Manifest:
    name: str
    version: int
    description: str
    shape: str
    cell: str
    layers: int
    hidden_size: int
    tokenizer: TokenizerSpec | None  # None for a vectors input
    output: OutputSpec
    graphs: dict[str, GraphSpec]
    initial_state: InitialStateSpec = field(default_factory=InitialStateSpec)
    input: InputSpec = field(default_factory=InputSpec)
    state: StateSpec | None = None  # None: cell_state(cell, layers, hidden_size)
    conditions: tuple[str, ...] = ()
    weights_file: str = "weights.bin"
    card_file: str = "MODEL_CARD.md"
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.state is None:
            object.__setattr__(self, "state", cell_state(self.cell, self.layers, self.hidden_size))

    @property
    def state_layout(self) -> StateSpec:
        assert self.state is not None  # set by __post_init__
        return self.state

    @property
    def shares_weights(self) -> bool:
        """Whether the graphs reference the weights file (format 3) rather than each
        holding their own weights beside an .npz (formats 1 and 2)."""
        return self.format_version >= SHARED_WEIGHTS_FORMAT

    @property
    def output_size(self) -> int:
        """K, the width of the logits: the vocabulary size, the number of labels, or 0
        (a regression output has no logits)."""
        if self.output.kind == "vocabulary":
            assert self.tokenizer is not None
            return self.tokenizer.size
        return len(self.output.labels)

    @property
    def state_shape(self) -> tuple[int, int]:
        """(S, W), the state array of one session: its rows and width."""
        return self.state_layout.rows, self.state_layout.width

    def signature(self, kind: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The input and output names of graph ``kind`` for this manifest."""
        return graph_signature(kind, self.input, self.output)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"

    def write(self, directory: Path) -> None:
        (directory / MANIFEST_FILE).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Parse and check a manifest; raise PackageError naming the first bad field."""
        r = FieldReader(data, "manifest", PackageError)
        fmt = r.integer("format_version", 1, FORMAT_VERSION)
        later = fmt >= 2  # the fields format 2 added: absent from format 1 manifests
        cell = r.choice("cell", CELLS)
        layers = r.integer("layers", 1, 64)
        hidden_size = r.integer("hidden_size", 1, 1 << 16)
        if later:  # optional in format 2; unknown (an error) in format 1
            r.seen.update(("input", "state"))
        input_spec = _input_spec(r.child("input")) if later and "input" in r.data else InputSpec()
        output = _output_spec(r.child("output"), values=later)
        tokenizer = None if input_spec.kind == "vectors" else _tokenizer_spec(r.child("tokenizer"))
        if input_spec.kind == "vectors" and r.data.get("tokenizer") is not None:
            raise PackageError("manifest.tokenizer must be null for a 'vectors' input")
        r.seen.add("tokenizer")
        if input_spec.kind == "vectors" and output.kind == "vocabulary":
            raise PackageError(
                "manifest.output.kind = 'vocabulary' needs a 'tokens' input (a vocabulary "
                "to feed generated tokens back); a vectors model outputs labels, sigmoid "
                "or regression"
            )
        manifest = cls(
            format_version=fmt,
            name=r.string("name", pattern=NAME_PATTERN),
            version=r.integer("version", 1, 2**31 - 1),
            description=r.string("description", allow_empty=True),
            shape=r.choice("shape", SHAPES),
            cell=cell,
            layers=layers,
            hidden_size=hidden_size,
            tokenizer=tokenizer,
            output=output,
            graphs=_graph_specs(r.child("graphs"), input_spec, output),
            initial_state=_initial_state_spec(r.child("initial_state")),
            input=input_spec,
            state=_state_spec(r.child("state"), cell, layers, hidden_size)
            if later and "state" in r.data
            else None,
            conditions=tuple(r.string_list("conditions", required=False)),
            weights_file=r.string("weights_file"),
            card_file=r.string("card_file"),
            training=r.mapping("training"),
            metrics={k: float(v) for k, v in r.mapping("metrics", value_type=float).items()},
        )
        r.no_extra()
        manifest.check_consistency()
        return manifest

    def check_consistency(self) -> None:
        """What no single field shows: the fields that depend on one another."""
        kind = self.initial_state.kind
        if kind in ("encoder", "condition") and kind not in self.graphs:
            raise PackageError(
                f"manifest.initial_state.kind = {kind!r} needs a {kind!r} graph in manifest.graphs"
            )
        if (kind == "condition") != bool(self.conditions):
            raise PackageError(
                "manifest.conditions must name the conditions of a 'condition' initial state "
                "and be empty otherwise"
            )
        token = self.initial_state.token
        specials = self.tokenizer.special_tokens if self.tokenizer is not None else {}
        if token is not None and token not in specials:
            raise PackageError(
                f"manifest.initial_state.token = {token!r} is not one "
                f"of the special tokens {sorted(specials)}"
            )
        if self.input.kind == "vectors" and "encoder" in self.graphs:
            raise PackageError("manifest.graphs.encoder: an encoder reads tokens")
        if self.output.kind == "vocabulary" and "head" not in self.graphs:
            raise PackageError(
                "manifest.graphs: a 'vocabulary' output needs the 'head' graph (generation "
                "starts from the output of the current state)"
            )
        if self.cell == "custom" and (self.layers, self.hidden_size) != self.state_shape:
            raise PackageError(
                f"manifest.layers, hidden_size = {self.layers}, {self.hidden_size}: for a "
                f"'custom' cell they are the state's rows and width {self.state_shape}"
            )


def _tokenizer_spec(r: FieldReader) -> TokenizerSpec:
    specials = r.mapping("special_tokens", value_type=int)
    for role, token_id in specials.items():
        if role not in SPECIAL_ROLES:
            raise PackageError(
                f"manifest.tokenizer.special_tokens: role {role!r} is not one of {SPECIAL_ROLES}"
            )
        if token_id < 0:
            raise PackageError(f"manifest.tokenizer.special_tokens.{role} = {token_id} < 0")
    spec = TokenizerSpec(
        kind=r.choice("kind", TOKENIZER_KINDS),
        vocabulary_file=r.string("vocabulary_file"),
        size=r.integer("size", 1, 1 << 24),
        special_tokens=specials,
        normalize=r.choice("normalize", NORMALIZATIONS),
        lowercase=r.boolean("lowercase"),
    )
    r.no_extra()
    return spec


def _input_spec(r: FieldReader) -> InputSpec:
    kind = r.choice("kind", INPUT_KINDS)
    size = r.integer("size", 1, 1 << 20) if kind == "vectors" else r.integer("size", 0, 0)
    r.no_extra()
    return InputSpec(kind=kind, size=size)


def _output_spec(r: FieldReader, *, values: bool) -> OutputSpec:
    kind = r.choice("kind", OUTPUT_KINDS)
    labels = tuple(r.string_list("labels"))
    size = r.integer("values", 0, 1 << 20) if values and "values" in r.data else 0
    if kind in ("vocabulary", "regression") and labels:
        raise PackageError(f"manifest.output.labels must be empty for a {kind} output")
    if kind in ("labels", "sigmoid") and not labels:
        raise PackageError(f"manifest.output.labels must name every output of a {kind} head")
    if kind == "regression" and not size:
        raise PackageError("manifest.output.values = 0: a regression output needs its size")
    if kind == "vocabulary" and size:
        raise PackageError("manifest.output.values must be 0 for a vocabulary output")
    r.no_extra()
    return OutputSpec(kind=kind, labels=labels, values=size)


def _initial_state_spec(r: FieldReader) -> InitialStateSpec:
    kind = r.choice("kind", INITIAL_STATE_KINDS)
    token = r.optional_string("token")
    file = r.optional_string("file")
    if kind == "after_token" and token is None:
        raise PackageError("manifest.initial_state.token is required for kind 'after_token'")
    if kind in ("zeros", "constant") and token is not None:
        raise PackageError(f"manifest.initial_state.token must be null for kind {kind!r}")
    if (kind == "constant") != (file is not None):
        raise PackageError(
            "manifest.initial_state.file names the .npy state of kind 'constant' "
            "and must be null otherwise"
        )
    r.no_extra()
    return InitialStateSpec(kind=kind, token=token, file=file)


def _state_spec(r: FieldReader, cell: str, layers: int, hidden_size: int) -> StateSpec:
    width = r.integer("width", 1, 1 << 20)
    parts: list[StatePart] = []
    raw = r.array("parts")
    for index, item in enumerate(raw):
        p = r.item(item, f"{r.where}.parts[{index}]")
        part = StatePart(
            name=p.string("name", pattern=STATE_PART_NAME),
            rows=p.integer("rows", 1, 1 << 16),
            bound=p.optional_number("bound", low=0.0),
        )
        p.no_extra()
        parts.append(part)
    r.no_extra()
    if not parts:
        raise PackageError(f"{r.where}.parts: at least one part is required")
    names = [part.name for part in parts]
    if len(set(names)) != len(names):
        raise PackageError(f"{r.where}.parts: duplicate names {names}")
    spec = StateSpec(width=width, parts=tuple(parts))
    if cell != "custom":
        # A known cell's layout is fixed by its equations; only c's bound is the package's.
        known = cell_state(cell, layers, hidden_size, cell_bound=parts[-1].bound)
        fixed = [(p.name, p.rows, p.bound if p.name == "h" else "any") for p in known.parts]
        given = [(p.name, p.rows, p.bound if p.name == "h" else "any") for p in spec.parts]
        if (width, given) != (known.width, fixed):
            raise PackageError(
                f"{r.where}: width {width}, parts {given}; cell {cell!r} with {layers} layer(s) "
                f"of {hidden_size} has width {known.width}, parts {fixed}"
            )
    return spec


def graph_signature(
    kind: str, input: InputSpec, output: OutputSpec
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The input and output names of a graph kind, in order (the table at the top)."""
    x = "tokens" if input.kind == "tokens" else "inputs"
    outputs: tuple[str, ...] = ("logits",) if output.kind != "regression" else ()
    outputs += ("values",) if output.values else ()
    signatures = {
        "step": ((x, "state"), (*outputs, "state_out")),
        "head": (("state",), outputs),
        "sequence": ((x, "lengths", "state"), (*outputs, "state_out")),
        "encoder": (("tokens", "lengths"), ("state",)),
        "condition": (("condition",), ("state",)),
    }
    return signatures[kind]


def _graph_specs(r: FieldReader, input: InputSpec, output: OutputSpec) -> dict[str, GraphSpec]:
    graphs: dict[str, GraphSpec] = {}
    for kind in r.data:
        if kind not in GRAPH_KINDS:
            raise PackageError(
                f"manifest.graphs: unknown graph {kind!r} (known: {sorted(GRAPH_KINDS)})"
            )
        g = r.child(kind)
        spec = GraphSpec(
            file=g.string("file"),
            inputs=tuple(g.string_list("inputs")),
            outputs=tuple(g.string_list("outputs")),
        )
        g.no_extra()
        inputs, outputs = graph_signature(kind, input, output)
        if (spec.inputs, spec.outputs) != (inputs, outputs):
            raise PackageError(
                f"manifest.graphs.{kind}: inputs/outputs {spec.inputs}/{spec.outputs}, "
                f"the format requires {inputs}/{outputs} for a {input.kind} input and a "
                f"{output.kind} output" + (f" with {output.values} values" if output.values else "")
            )
        graphs[kind] = spec
    for kind in REQUIRED_GRAPHS:
        if kind not in graphs:
            raise PackageError(f"manifest.graphs: the {kind!r} graph is required")
    return graphs


def standard_graph(
    kind: str, file: str, input: InputSpec | None = None, output: OutputSpec | None = None
) -> GraphSpec:
    """The GraphSpec of a graph kind with the format's input and output names (by
    default those of a token model with logits)."""
    inputs, outputs = graph_signature(
        kind, input or InputSpec(), output or OutputSpec(kind="vocabulary")
    )
    return GraphSpec(file=file, inputs=inputs, outputs=outputs)
