"""Plain Python values the client returns and accepts, free of protobuf types.

Enumerations from the proto become short lowercase strings (`"many-to-many"`, `"vocabulary"`,
`"stop-string"`), so results print, compare and serialise to JSON as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from rnnserve import _validate


@dataclass(frozen=True)
class Vocabulary:
    """A model's token vocabulary: `kind` is "char" or "word"; ids are 0 .. size-1."""

    kind: str
    size: int
    special_tokens: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StatePart:
    """Consecutive rows of a session's state: `h`, `c` (an LSTM's) or a custom model's
    own; `bound` None: no bound of its own (the server's `max_unbounded_state` holds)."""

    name: str
    rows: int
    bound: float | None


@dataclass(frozen=True)
class ModelInfo:
    """Metadata of one servable model version.

    `shape` is the task shape ("many-to-many", "seq2seq", ...), `output` what the head
    produces ("vocabulary", "labels", "sigmoid" or "regression"; `labels` names the outputs
    of labels and sigmoid heads; `values` is the size of the real output vector a step
    returns, 0 for none). `input` is "tokens" (`vocabulary` says which) or "vectors" of
    `input_size` floats (`vocabulary` None). `initial_state` says how a session starts:
    "zeros", "after_token", "constant", "encoder" (pass `source=` to `create_session`) or
    "condition" (pass `condition=`, one of `conditions`). A session's state is
    `state_parts` rows of `state_width` floats; `output_before_input` says whether the
    model has an output before its first input (generation without a prompt needs it).
    """

    name: str
    version: int
    shape: str
    cell: str
    layers: int
    hidden_size: int
    vocabulary: Vocabulary | None
    output: str
    labels: list[str]
    description: str
    state_bytes: int
    metrics: dict[str, float]
    initial_state: str
    conditions: list[str]
    input: str = "tokens"
    input_size: int = 0
    values: int = 0
    state_parts: list[StatePart] = field(default_factory=list)
    state_width: int = 0
    output_before_input: bool = True


@dataclass(frozen=True)
class TokenizerRules:
    """How a model's tokenizer encodes and decodes text (the proto's TokenizerRules
    states how the rules combine); `VocabularyListing.encode` and `.decode` apply them."""

    kind: str
    normalization: str
    lowercase: bool
    word_pattern: str
    offsets: str
    separator: str
    unknown_text: str
    attached: list[str]
    attached_categories: list[str]


@dataclass(frozen=True)
class VocabularyListing:
    """A model's whole vocabulary (`get_vocabulary`): `tokens[i]` is token i as the
    vocabulary writes it; the special tokens by role; the tokenizer's rules."""

    model: str
    version: int
    tokens: list[str]
    special_tokens: dict[str, int]
    rules: TokenizerRules


@dataclass(frozen=True)
class TrainingModel:
    """A model still training into the server's repository (served once it is written):
    its `phase` ("training", "evaluating", "exporting"), `step` of `steps`, and the
    `seconds` since it started."""

    name: str
    phase: str
    step: int
    steps: int
    seconds: float

    @property
    def progress(self) -> float:
        return self.step / self.steps if self.steps else 0.0


@dataclass(frozen=True)
class SessionInfo:
    """A session as the server created it: its id, model version and idle timeout."""

    id: str
    model: ModelInfo
    idle_timeout_s: int


@dataclass(frozen=True)
class TokenProb:
    """One candidate next token (or label) and its probability."""

    id: int
    text: str
    probability: float


@dataclass(frozen=True)
class StepResult:
    """The answer to one step.

    `steps` counts the inputs (tokens or vectors) the session has consumed in total,
    `consumed` those of this step; `top` lists the most probable next tokens (or labels),
    highest first; `distribution` is the full distribution indexed by token id when it was
    asked for, else None; `values` the model's real output vector (regression), else None.
    """

    session_id: str
    steps: int
    consumed: int
    top: list[TokenProb]
    distribution: list[float] | None
    values: list[float] | None = None


@dataclass(frozen=True)
class GeneratedToken:
    """One sampled token and its probability under the distribution that drew it: `text`
    is the token as the vocabulary writes it (as in `TokenProb.text`), `piece` what it adds
    to the generated text (for word vocabularies, with the space before it)."""

    id: int
    text: str
    probability: float
    piece: str = ""


@dataclass(frozen=True)
class GeneratedChunk:
    """Tokens generated since the previous chunk.

    `finish_reason` is None while generation runs and on the last chunk one of "length",
    "end-token", "stop-string" (then `matched_stop` is the stop string that matched) or
    "stop-token".
    """

    tokens: list[GeneratedToken]
    text: str
    steps: int
    finish_reason: str | None
    matched_stop: str | None


@dataclass(frozen=True)
class StepInput:
    """One request of `step_stream` (or one step of a `step_many` batch): exactly one of
    `tokens`, `text` and `vectors` (for a model of vector inputs: one vector of the model's
    `input_size` floats per step), validated here.

    `top_k` None means the server's default (5); `return_distribution` asks for the full
    distribution as well.
    """

    session_id: str
    tokens: Sequence[int] | None = None
    text: str | None = None
    top_k: int | None = None
    return_distribution: bool = False
    vectors: Sequence[Sequence[float]] | None = None

    def __post_init__(self) -> None:
        _validate.string("session_id", self.session_id)
        if self.vectors is not None:
            if self.tokens is not None or self.text is not None:
                raise ValueError("pass exactly one of tokens=, text= and vectors=")
            # Tuples keep the frozen value immutable even if the caller's lists change later.
            object.__setattr__(self, "vectors", _validate.vectors("vectors", self.vectors))
        else:
            tokens = _validate.one_input(self.tokens, self.text, names=("tokens", "text"))
            object.__setattr__(self, "tokens", tokens)
        if self.top_k is not None:
            _validate.unsigned("top_k", self.top_k, bits=32)


@dataclass(frozen=True)
class ClassifyResult:
    """The answer to `classify`.

    `top` lists the most probable labels after the last token, highest first; `final` holds
    every label's probability after the last token, in `ModelInfo.labels` order; `steps` one
    such row per input token when `every_step` was asked for, else it is empty.
    """

    top: list[TokenProb]
    final: list[float]
    steps: list[list[float]]


@dataclass(frozen=True)
class TranslateResult:
    """The answer to `translate`: the decoded tokens, their text and why decoding ended
    ("length", "end-token" or "stop-token")."""

    tokens: list[GeneratedToken]
    text: str
    finish_reason: str


@dataclass(frozen=True)
class RefusedPackage:
    """A model package the server could not load: its directory and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class ReloadResult:
    """The answer to `reload_models` and `load_model`.

    `models` lists the model versions loaded afterwards (for `load_model`: the model's);
    `added` and `removed` name the versions the call loaded and unloaded as "name/version";
    `refused` the broken packages (and config.toml files).
    """

    models: list[ModelInfo]
    added: list[str]
    removed: list[str]
    refused: list[RefusedPackage]


@dataclass(frozen=True)
class UnloadResult:
    """The answer to `unload_model`: the versions taken out of service ("name/version")
    and the sessions still open on them (they keep working until closed or expired)."""

    removed: list[str]
    open_sessions: int
