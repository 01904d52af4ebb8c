"""The model package: the contract between ``training/`` (writes) and the server (reads).

A package is a directory ``<repository>/<name>/<version>/`` holding::

    manifest.json     this module's Manifest, as JSON (docs/model-package.md)
    vocab.json        the vocabulary, {"tokens": [...]} in id order
    step.onnx         (tokens [B] int64, state [L,B,H] f32) -> (logits [B,K], state_out [L,B,H])
    head.onnx         (state [L,B,H] f32) -> (logits [B,K]): the output for the current state
    sequence.onnx     optional: a whole prompt per row in one run (see GRAPH_SIGNATURES)
    encoder.onnx      optional: source tokens -> initial state (seq2seq)
    condition.onnx    optional: condition index -> initial state (one-to-many)
    weights.bin       every weight tensor once, which the graphs reference (ONNX external
                      data); format 1 packages embed the weights in each graph and hold
                      weights.npz, the weights in the notation of docs/MODELS.md
    MODEL_CARD.md     what the model is, its data, its metrics, a sample

This module parses and checks everything that needs no inference engine; the runtime
checks the graphs' signatures against the manifest when it loads them.
"""

from __future__ import annotations

import json
import re
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rnnserve_server.tokenizer import NORMALIZATIONS, SPECIAL_ROLES, TOKENIZER_KINDS, Tokenizer

# 2: the graphs share one weights file (ONNX external data); 1: each graph holds its own
# weights, and weights_file is an .npz in the notation of docs/MODELS.md.
FORMAT_VERSION = 2
MANIFEST_FILE = "manifest.json"
SHAPES = ("one-to-one", "one-to-many", "many-to-one", "many-to-many", "seq2seq")
CELLS = ("rnn-tanh", "rnn-relu", "gru-simple", "gru", "gru-torch")
OUTPUT_KINDS = ("vocabulary", "labels", "sigmoid")
INITIAL_STATE_KINDS = ("zeros", "after_token", "encoder", "condition")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

# Input and output names of each graph kind, in order. They are part of the format.
#   step:      tokens int64 [B], state f32 [L,B,H] -> logits f32 [B,K], state_out [L,B,H]
#   head:      state [L,B,H] -> logits [B,K]
#   sequence:  tokens int64 [B,T], lengths int64 [B] (1..T), state [L,B,H]
#                -> logits [B,K] after each row's last token, state_out after it
#   encoder:   tokens int64 [B,T], lengths int64 [B] -> state [L,B,H] (a decoder's start)
#   condition: condition int64 [B] (index into manifest.conditions) -> state [L,B,H]
GRAPH_SIGNATURES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "step": (("tokens", "state"), ("logits", "state_out")),
    "head": (("state",), ("logits",)),
    "sequence": (("tokens", "lengths", "state"), ("logits", "state_out")),
    "encoder": (("tokens", "lengths"), ("state",)),
    "condition": (("condition",), ("state",)),
}
REQUIRED_GRAPHS = ("step", "head")


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
class OutputSpec:
    """The output head: softmax over the vocabulary or over labels, or sigmoids."""

    kind: str
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class InitialStateSpec:
    """How a new session's state is made.

    ``zeros``: every layer's state is 0. ``after_token``: the state after feeding the
    special token ``token`` (e.g. ``bos`` for a language model trained on documents that
    start with it) to a zero state. ``encoder``: the encoder graph's state for the
    source the caller gives, then ``token`` (if set, e.g. ``bos``) fed to it.
    ``condition``: the condition graph's state for the condition the caller names, then
    ``token`` (if set). The step count starts at 0 in every case.
    """

    kind: str = "zeros"
    token: str | None = None


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
    tokenizer: TokenizerSpec
    output: OutputSpec
    graphs: dict[str, GraphSpec]
    initial_state: InitialStateSpec = field(default_factory=InitialStateSpec)
    conditions: tuple[str, ...] = ()
    weights_file: str = "weights.bin"
    card_file: str = "MODEL_CARD.md"
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    @property
    def output_size(self) -> int:
        """K, the width of the logits: the vocabulary size or the number of labels."""
        if self.output.kind == "vocabulary":
            return self.tokenizer.size
        return len(self.output.labels)

    @property
    def state_shape(self) -> tuple[int, int]:
        """(layers, hidden size): the state of one session."""
        return self.layers, self.hidden_size

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"

    def write(self, directory: Path) -> None:
        (directory / MANIFEST_FILE).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Parse and check a manifest; raise PackageError naming the first bad field."""
        r = _Reader(data, "manifest")
        fmt = r.integer("format_version", 1, FORMAT_VERSION)
        manifest = cls(
            format_version=fmt,
            name=r.string("name", pattern=NAME_PATTERN),
            version=r.integer("version", 1, 2**31 - 1),
            description=r.string("description", allow_empty=True),
            shape=r.choice("shape", SHAPES),
            cell=r.choice("cell", CELLS),
            layers=r.integer("layers", 1, 64),
            hidden_size=r.integer("hidden_size", 1, 1 << 16),
            tokenizer=_tokenizer_spec(r.child("tokenizer")),
            output=_output_spec(r.child("output")),
            graphs=_graph_specs(r.child("graphs")),
            initial_state=_initial_state_spec(r.child("initial_state")),
            conditions=tuple(r.string_list("conditions", required=False)),
            weights_file=r.string("weights_file"),
            card_file=r.string("card_file"),
            training=r.mapping("training"),
            metrics={k: float(v) for k, v in r.mapping("metrics", value_type=float).items()},
        )
        r.no_extra()
        kind = manifest.initial_state.kind
        if kind in ("encoder", "condition") and kind not in manifest.graphs:
            raise PackageError(
                f"manifest.initial_state.kind = {kind!r} needs a {kind!r} graph in manifest.graphs"
            )
        if (kind == "condition") != bool(manifest.conditions):
            raise PackageError(
                "manifest.conditions must name the conditions of a 'condition' initial state "
                "and be empty otherwise"
            )
        if manifest.initial_state.token is not None and (
            manifest.initial_state.token not in manifest.tokenizer.special_tokens
        ):
            raise PackageError(
                f"manifest.initial_state.token = {manifest.initial_state.token!r} is not one "
                f"of the special tokens {sorted(manifest.tokenizer.special_tokens)}"
            )
        return manifest


@dataclass(frozen=True)
class ModelPackage:
    """A checked package on disk: its manifest, tokenizer and file paths."""

    path: Path
    manifest: Manifest
    tokenizer: Tokenizer

    def graph_path(self, kind: str) -> Path:
        return self.path / self.manifest.graphs[kind].file

    @property
    def key(self) -> tuple[str, int]:
        return self.manifest.name, self.manifest.version


def load_package(path: Path) -> ModelPackage:
    """Read and check a package directory; raise PackageError with a clear message."""
    manifest_path = path / MANIFEST_FILE
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackageError(f"{manifest_path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{manifest_path}: unreadable: {exc}") from None
    manifest = Manifest.from_dict(data)

    if path.name != str(manifest.version) or path.parent.name != manifest.name:
        raise PackageError(
            f"{path}: manifest says {manifest.name}/{manifest.version}, "
            f"but the package lies in {path.parent.name}/{path.name}"
        )
    files = [manifest.tokenizer.vocabulary_file, manifest.weights_file, manifest.card_file]
    files += [g.file for g in manifest.graphs.values()]
    for name in files:
        _check_inside(path, name)

    spec = manifest.tokenizer
    try:
        tokens = Tokenizer.load_tokens(path / spec.vocabulary_file)
        tokenizer = Tokenizer(
            kind=spec.kind,
            tokens=tokens,
            special_tokens=dict(spec.special_tokens),
            normalize=spec.normalize,
            lowercase=spec.lowercase,
        )
    except (OSError, ValueError) as exc:
        raise PackageError(f"{path / spec.vocabulary_file}: {exc}") from None
    if tokenizer.size != spec.size:
        raise PackageError(
            f"{path / spec.vocabulary_file}: {tokenizer.size} tokens, "
            f"but manifest.tokenizer.size = {spec.size}"
        )
    if manifest.format_version == 1:
        _check_npz(path / manifest.weights_file)
    return ModelPackage(path=path, manifest=manifest, tokenizer=tokenizer)


def _check_npz(path: Path) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(n.endswith(".npy") for n in archive.namelist()):
                raise PackageError(f"{path}: holds no arrays")
    except zipfile.BadZipFile as exc:
        raise PackageError(f"{path}: not an .npz archive: {exc}") from None


def _check_inside(package: Path, name: str) -> None:
    target = (package / name).resolve()
    if package.resolve() not in target.parents:
        raise PackageError(f"{package}: file {name!r} lies outside the package")
    if not target.is_file():
        raise PackageError(f"{package / name}: missing")


def _tokenizer_spec(r: _Reader) -> TokenizerSpec:
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


def _output_spec(r: _Reader) -> OutputSpec:
    kind = r.choice("kind", OUTPUT_KINDS)
    labels = tuple(r.string_list("labels"))
    if kind == "vocabulary" and labels:
        raise PackageError("manifest.output.labels must be empty for a vocabulary output")
    if kind != "vocabulary" and not labels:
        raise PackageError(f"manifest.output.labels must name every output of a {kind} head")
    r.no_extra()
    return OutputSpec(kind=kind, labels=labels)


def _initial_state_spec(r: _Reader) -> InitialStateSpec:
    kind = r.choice("kind", INITIAL_STATE_KINDS)
    token = r.optional_string("token")
    if kind == "after_token" and token is None:
        raise PackageError("manifest.initial_state.token is required for kind 'after_token'")
    if kind == "zeros" and token is not None:
        raise PackageError("manifest.initial_state.token must be null for kind 'zeros'")
    r.no_extra()
    return InitialStateSpec(kind=kind, token=token)


def _graph_specs(r: _Reader) -> dict[str, GraphSpec]:
    graphs: dict[str, GraphSpec] = {}
    for kind in r.data:
        if kind not in GRAPH_SIGNATURES:
            raise PackageError(
                f"manifest.graphs: unknown graph {kind!r} (known: {sorted(GRAPH_SIGNATURES)})"
            )
        g = r.child(kind)
        spec = GraphSpec(
            file=g.string("file"),
            inputs=tuple(g.string_list("inputs")),
            outputs=tuple(g.string_list("outputs")),
        )
        g.no_extra()
        if (spec.inputs, spec.outputs) != GRAPH_SIGNATURES[kind]:
            raise PackageError(
                f"manifest.graphs.{kind}: inputs/outputs {spec.inputs}/{spec.outputs}, "
                f"the format requires {GRAPH_SIGNATURES[kind][0]}/{GRAPH_SIGNATURES[kind][1]}"
            )
        graphs[kind] = spec
    for kind in REQUIRED_GRAPHS:
        if kind not in graphs:
            raise PackageError(f"manifest.graphs: the {kind!r} graph is required")
    return graphs


def standard_graph(kind: str, file: str) -> GraphSpec:
    """The GraphSpec of a graph kind with the format's input and output names."""
    inputs, outputs = GRAPH_SIGNATURES[kind]
    return GraphSpec(file=file, inputs=inputs, outputs=outputs)


class _Reader:
    """Typed access to one JSON object, with error messages that name the field path."""

    def __init__(self, data: Any, where: str) -> None:
        if not isinstance(data, dict):
            raise PackageError(f"{where}: expected a JSON object, got {type(data).__name__}")
        self.data: dict[str, Any] = data
        self.where = where
        self.seen: set[str] = set()

    def _get(self, key: str) -> Any:
        self.seen.add(key)
        if key not in self.data:
            raise PackageError(f"{self.where}.{key}: missing")
        return self.data[key]

    def child(self, key: str) -> _Reader:
        return _Reader(self._get(key), f"{self.where}.{key}")

    def string(
        self, key: str, *, allow_empty: bool = False, pattern: re.Pattern[str] | None = None
    ) -> str:
        value = self._get(key)
        if not isinstance(value, str) or (not value and not allow_empty):
            raise PackageError(f"{self.where}.{key} = {value!r}: expected a non-empty string")
        if pattern is not None and not pattern.match(value):
            raise PackageError(f"{self.where}.{key} = {value!r}: must match {pattern.pattern}")
        return value

    def optional_string(self, key: str) -> str | None:
        if self.data.get(key) is None:
            self.seen.add(key)
            return None
        return self.string(key)

    def string_list(self, key: str, *, required: bool = True) -> list[str]:
        if not required and key not in self.data:
            self.seen.add(key)
            return []
        value = self._get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise PackageError(f"{self.where}.{key}: expected a list of strings")
        return value

    def integer(self, key: str, low: int, high: int) -> int:
        value = self._get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise PackageError(
                f"{self.where}.{key} = {value!r}: expected an integer in {low}..{high}"
            )
        return value

    def boolean(self, key: str) -> bool:
        value = self._get(key)
        if not isinstance(value, bool):
            raise PackageError(f"{self.where}.{key} = {value!r}: expected true or false")
        return value

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        value = self._get(key)
        if value not in allowed:
            raise PackageError(f"{self.where}.{key} = {value!r}: expected one of {allowed}")
        return str(value)

    def mapping(self, key: str, value_type: type | None = None) -> dict[str, Any]:
        value = self._get(key)
        if not isinstance(value, dict):
            raise PackageError(f"{self.where}.{key}: expected a JSON object")
        if value_type is not None:
            for k, v in value.items():
                ok = (
                    isinstance(v, (int, float))
                    if value_type is float
                    else isinstance(v, value_type)
                )
                if not ok or isinstance(v, bool):
                    raise PackageError(
                        f"{self.where}.{key}.{k} = {v!r}: expected {value_type.__name__}"
                    )
        return value

    def no_extra(self) -> None:
        extra = sorted(set(self.data) - self.seen)
        if extra:
            raise PackageError(f"{self.where}: unknown field(s) {extra}")
