from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskShape(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TASK_SHAPE_UNSPECIFIED: _ClassVar[TaskShape]
    TASK_SHAPE_ONE_TO_ONE: _ClassVar[TaskShape]
    TASK_SHAPE_ONE_TO_MANY: _ClassVar[TaskShape]
    TASK_SHAPE_MANY_TO_ONE: _ClassVar[TaskShape]
    TASK_SHAPE_MANY_TO_MANY: _ClassVar[TaskShape]
    TASK_SHAPE_SEQ2SEQ: _ClassVar[TaskShape]

class OutputKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_KIND_UNSPECIFIED: _ClassVar[OutputKind]
    OUTPUT_KIND_VOCABULARY: _ClassVar[OutputKind]
    OUTPUT_KIND_LABELS: _ClassVar[OutputKind]
    OUTPUT_KIND_SIGMOID: _ClassVar[OutputKind]
    OUTPUT_KIND_REGRESSION: _ClassVar[OutputKind]

class InputKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INPUT_KIND_UNSPECIFIED: _ClassVar[InputKind]
    INPUT_KIND_TOKENS: _ClassVar[InputKind]
    INPUT_KIND_VECTORS: _ClassVar[InputKind]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_END_TOKEN: _ClassVar[FinishReason]
    FINISH_REASON_STOP_STRING: _ClassVar[FinishReason]
    FINISH_REASON_STOP_TOKEN: _ClassVar[FinishReason]
TASK_SHAPE_UNSPECIFIED: TaskShape
TASK_SHAPE_ONE_TO_ONE: TaskShape
TASK_SHAPE_ONE_TO_MANY: TaskShape
TASK_SHAPE_MANY_TO_ONE: TaskShape
TASK_SHAPE_MANY_TO_MANY: TaskShape
TASK_SHAPE_SEQ2SEQ: TaskShape
OUTPUT_KIND_UNSPECIFIED: OutputKind
OUTPUT_KIND_VOCABULARY: OutputKind
OUTPUT_KIND_LABELS: OutputKind
OUTPUT_KIND_SIGMOID: OutputKind
OUTPUT_KIND_REGRESSION: OutputKind
INPUT_KIND_UNSPECIFIED: InputKind
INPUT_KIND_TOKENS: InputKind
INPUT_KIND_VECTORS: InputKind
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_END_TOKEN: FinishReason
FINISH_REASON_STOP_STRING: FinishReason
FINISH_REASON_STOP_TOKEN: FinishReason

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "training")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    training: _containers.RepeatedCompositeFieldContainer[TrainingModel]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., training: _Optional[_Iterable[_Union[TrainingModel, _Mapping]]] = ...) -> None: ...

class TrainingModel(_message.Message):
    __slots__ = ("name", "phase", "step", "steps", "seconds")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    name: str
    phase: str
    step: int
    steps: int
    seconds: float
    def __init__(self, name: _Optional[str] = ..., phase: _Optional[str] = ..., step: _Optional[int] = ..., steps: _Optional[int] = ..., seconds: _Optional[float] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class StatePart(_message.Message):
    __slots__ = ("name", "rows", "bound")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    BOUND_FIELD_NUMBER: _ClassVar[int]
    name: str
    rows: int
    bound: float
    def __init__(self, name: _Optional[str] = ..., rows: _Optional[int] = ..., bound: _Optional[float] = ...) -> None: ...

class Vocabulary(_message.Message):
    __slots__ = ("kind", "size", "special_tokens")
    class SpecialTokensEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    size: int
    special_tokens: _containers.ScalarMap[str, int]
    def __init__(self, kind: _Optional[str] = ..., size: _Optional[int] = ..., special_tokens: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "shape", "cell", "layers", "hidden_size", "vocabulary", "output", "labels", "description", "state_bytes", "metrics", "initial_state", "conditions", "input", "input_size", "values", "state_parts", "state_width", "output_before_input")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    VOCABULARY_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    STATE_BYTES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    INITIAL_STATE_FIELD_NUMBER: _ClassVar[int]
    CONDITIONS_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    INPUT_SIZE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    STATE_PARTS_FIELD_NUMBER: _ClassVar[int]
    STATE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_BEFORE_INPUT_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    shape: TaskShape
    cell: str
    layers: int
    hidden_size: int
    vocabulary: Vocabulary
    output: OutputKind
    labels: _containers.RepeatedScalarFieldContainer[str]
    description: str
    state_bytes: int
    metrics: _containers.ScalarMap[str, float]
    initial_state: str
    conditions: _containers.RepeatedScalarFieldContainer[str]
    input: InputKind
    input_size: int
    values: int
    state_parts: _containers.RepeatedCompositeFieldContainer[StatePart]
    state_width: int
    output_before_input: bool
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., shape: _Optional[_Union[TaskShape, str]] = ..., cell: _Optional[str] = ..., layers: _Optional[int] = ..., hidden_size: _Optional[int] = ..., vocabulary: _Optional[_Union[Vocabulary, _Mapping]] = ..., output: _Optional[_Union[OutputKind, str]] = ..., labels: _Optional[_Iterable[str]] = ..., description: _Optional[str] = ..., state_bytes: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., initial_state: _Optional[str] = ..., conditions: _Optional[_Iterable[str]] = ..., input: _Optional[_Union[InputKind, str]] = ..., input_size: _Optional[int] = ..., values: _Optional[int] = ..., state_parts: _Optional[_Iterable[_Union[StatePart, _Mapping]]] = ..., state_width: _Optional[int] = ..., output_before_input: _Optional[bool] = ...) -> None: ...

class GetVocabularyRequest(_message.Message):
    __slots__ = ("model", "version", "start", "limit")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    start: int
    limit: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., start: _Optional[int] = ..., limit: _Optional[int] = ...) -> None: ...

class TokenizerRules(_message.Message):
    __slots__ = ("kind", "normalization", "lowercase", "word_pattern", "offsets", "separator", "unknown_text", "attached", "attached_categories")
    KIND_FIELD_NUMBER: _ClassVar[int]
    NORMALIZATION_FIELD_NUMBER: _ClassVar[int]
    LOWERCASE_FIELD_NUMBER: _ClassVar[int]
    WORD_PATTERN_FIELD_NUMBER: _ClassVar[int]
    OFFSETS_FIELD_NUMBER: _ClassVar[int]
    SEPARATOR_FIELD_NUMBER: _ClassVar[int]
    UNKNOWN_TEXT_FIELD_NUMBER: _ClassVar[int]
    ATTACHED_FIELD_NUMBER: _ClassVar[int]
    ATTACHED_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    kind: str
    normalization: str
    lowercase: bool
    word_pattern: str
    offsets: str
    separator: str
    unknown_text: str
    attached: _containers.RepeatedScalarFieldContainer[str]
    attached_categories: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kind: _Optional[str] = ..., normalization: _Optional[str] = ..., lowercase: _Optional[bool] = ..., word_pattern: _Optional[str] = ..., offsets: _Optional[str] = ..., separator: _Optional[str] = ..., unknown_text: _Optional[str] = ..., attached: _Optional[_Iterable[str]] = ..., attached_categories: _Optional[_Iterable[str]] = ...) -> None: ...

class GetVocabularyResponse(_message.Message):
    __slots__ = ("model", "version", "size", "start", "tokens", "next_start", "special_tokens", "tokenizer")
    class SpecialTokensEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    NEXT_START_FIELD_NUMBER: _ClassVar[int]
    SPECIAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    size: int
    start: int
    tokens: _containers.RepeatedScalarFieldContainer[str]
    next_start: int
    special_tokens: _containers.ScalarMap[str, int]
    tokenizer: TokenizerRules
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., size: _Optional[int] = ..., start: _Optional[int] = ..., tokens: _Optional[_Iterable[str]] = ..., next_start: _Optional[int] = ..., special_tokens: _Optional[_Mapping[str, int]] = ..., tokenizer: _Optional[_Union[TokenizerRules, _Mapping]] = ...) -> None: ...

class CreateSessionRequest(_message.Message):
    __slots__ = ("model", "version", "idle_timeout_s", "seed", "state", "source_tokens", "source_text", "condition")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TEXT_FIELD_NUMBER: _ClassVar[int]
    CONDITION_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    idle_timeout_s: int
    seed: int
    state: bytes
    source_tokens: TokenIds
    source_text: str
    condition: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., idle_timeout_s: _Optional[int] = ..., seed: _Optional[int] = ..., state: _Optional[bytes] = ..., source_tokens: _Optional[_Union[TokenIds, _Mapping]] = ..., source_text: _Optional[str] = ..., condition: _Optional[str] = ...) -> None: ...

class ForkSessionRequest(_message.Message):
    __slots__ = ("session_id", "idle_timeout_s")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    idle_timeout_s: int
    def __init__(self, session_id: _Optional[str] = ..., idle_timeout_s: _Optional[int] = ...) -> None: ...

class ExportSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ExportSessionResponse(_message.Message):
    __slots__ = ("state", "steps")
    STATE_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    state: bytes
    steps: int
    def __init__(self, state: _Optional[bytes] = ..., steps: _Optional[int] = ...) -> None: ...

class Session(_message.Message):
    __slots__ = ("session_id", "model", "idle_timeout_s")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IDLE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    model: ModelInfo
    idle_timeout_s: int
    def __init__(self, session_id: _Optional[str] = ..., model: _Optional[_Union[ModelInfo, _Mapping]] = ..., idle_timeout_s: _Optional[int] = ...) -> None: ...

class CloseSessionRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class CloseSessionResponse(_message.Message):
    __slots__ = ("steps",)
    STEPS_FIELD_NUMBER: _ClassVar[int]
    steps: int
    def __init__(self, steps: _Optional[int] = ...) -> None: ...

class TokenIds(_message.Message):
    __slots__ = ("ids",)
    IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ...) -> None: ...

class FloatVectors(_message.Message):
    __slots__ = ("steps", "values")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    steps: int
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, steps: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("session_id", "tokens", "text", "vectors", "top_k", "return_distribution", "request_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    RETURN_DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    tokens: TokenIds
    text: str
    vectors: FloatVectors
    top_k: int
    return_distribution: bool
    request_id: str
    def __init__(self, session_id: _Optional[str] = ..., tokens: _Optional[_Union[TokenIds, _Mapping]] = ..., text: _Optional[str] = ..., vectors: _Optional[_Union[FloatVectors, _Mapping]] = ..., top_k: _Optional[int] = ..., return_distribution: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class TokenProbability(_message.Message):
    __slots__ = ("id", "text", "probability")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    id: int
    text: str
    probability: float
    def __init__(self, id: _Optional[int] = ..., text: _Optional[str] = ..., probability: _Optional[float] = ...) -> None: ...

class StepResponse(_message.Message):
    __slots__ = ("session_id", "steps", "consumed", "top", "distribution", "values")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CONSUMED_FIELD_NUMBER: _ClassVar[int]
    TOP_FIELD_NUMBER: _ClassVar[int]
    DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    steps: int
    consumed: int
    top: _containers.RepeatedCompositeFieldContainer[TokenProbability]
    distribution: _containers.RepeatedScalarFieldContainer[float]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, session_id: _Optional[str] = ..., steps: _Optional[int] = ..., consumed: _Optional[int] = ..., top: _Optional[_Iterable[_Union[TokenProbability, _Mapping]]] = ..., distribution: _Optional[_Iterable[float]] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("session_id", "prompt_tokens", "prompt_text", "max_tokens", "temperature", "top_k", "top_p", "seed", "stop", "stop_token_ids", "tokens_per_message", "request_id")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TEXT_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    STOP_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    prompt_tokens: TokenIds
    prompt_text: str
    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    stop_token_ids: _containers.RepeatedScalarFieldContainer[int]
    tokens_per_message: int
    request_id: str
    def __init__(self, session_id: _Optional[str] = ..., prompt_tokens: _Optional[_Union[TokenIds, _Mapping]] = ..., prompt_text: _Optional[str] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., stop_token_ids: _Optional[_Iterable[int]] = ..., tokens_per_message: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class GeneratedToken(_message.Message):
    __slots__ = ("id", "text", "probability", "piece")
    ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    PIECE_FIELD_NUMBER: _ClassVar[int]
    id: int
    text: str
    probability: float
    piece: str
    def __init__(self, id: _Optional[int] = ..., text: _Optional[str] = ..., probability: _Optional[float] = ..., piece: _Optional[str] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("session_id", "tokens", "steps", "finish_reason", "matched_stop")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    MATCHED_STOP_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    tokens: _containers.RepeatedCompositeFieldContainer[GeneratedToken]
    steps: int
    finish_reason: FinishReason
    matched_stop: str
    def __init__(self, session_id: _Optional[str] = ..., tokens: _Optional[_Iterable[_Union[GeneratedToken, _Mapping]]] = ..., steps: _Optional[int] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., matched_stop: _Optional[str] = ...) -> None: ...

class StepManyRequest(_message.Message):
    __slots__ = ("session_ids", "tokens", "lengths", "texts", "top_k", "request_ids", "vectors", "value_counts")
    SESSION_IDS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    LENGTHS_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    REQUEST_IDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    VALUE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    session_ids: _containers.RepeatedScalarFieldContainer[str]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    lengths: _containers.RepeatedScalarFieldContainer[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    top_k: int
    request_ids: _containers.RepeatedScalarFieldContainer[str]
    vectors: _containers.RepeatedScalarFieldContainer[float]
    value_counts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, session_ids: _Optional[_Iterable[str]] = ..., tokens: _Optional[_Iterable[int]] = ..., lengths: _Optional[_Iterable[int]] = ..., texts: _Optional[_Iterable[str]] = ..., top_k: _Optional[int] = ..., request_ids: _Optional[_Iterable[str]] = ..., vectors: _Optional[_Iterable[float]] = ..., value_counts: _Optional[_Iterable[int]] = ...) -> None: ...

class StepError(_message.Message):
    __slots__ = ("index", "code", "message")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    index: int
    code: int
    message: str
    def __init__(self, index: _Optional[int] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class StepManyResponse(_message.Message):
    __slots__ = ("steps", "consumed", "top_counts", "top_ids", "top_texts", "top_probabilities", "errors", "value_counts", "values")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    CONSUMED_FIELD_NUMBER: _ClassVar[int]
    TOP_COUNTS_FIELD_NUMBER: _ClassVar[int]
    TOP_IDS_FIELD_NUMBER: _ClassVar[int]
    TOP_TEXTS_FIELD_NUMBER: _ClassVar[int]
    TOP_PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    VALUE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    steps: _containers.RepeatedScalarFieldContainer[int]
    consumed: _containers.RepeatedScalarFieldContainer[int]
    top_counts: _containers.RepeatedScalarFieldContainer[int]
    top_ids: _containers.RepeatedScalarFieldContainer[int]
    top_texts: _containers.RepeatedScalarFieldContainer[str]
    top_probabilities: _containers.RepeatedScalarFieldContainer[float]
    errors: _containers.RepeatedCompositeFieldContainer[StepError]
    value_counts: _containers.RepeatedScalarFieldContainer[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, steps: _Optional[_Iterable[int]] = ..., consumed: _Optional[_Iterable[int]] = ..., top_counts: _Optional[_Iterable[int]] = ..., top_ids: _Optional[_Iterable[int]] = ..., top_texts: _Optional[_Iterable[str]] = ..., top_probabilities: _Optional[_Iterable[float]] = ..., errors: _Optional[_Iterable[_Union[StepError, _Mapping]]] = ..., value_counts: _Optional[_Iterable[int]] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("model", "version", "tokens", "text", "vectors", "top_k", "every_step")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    EVERY_STEP_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    tokens: TokenIds
    text: str
    vectors: FloatVectors
    top_k: int
    every_step: bool
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., tokens: _Optional[_Union[TokenIds, _Mapping]] = ..., text: _Optional[str] = ..., vectors: _Optional[_Union[FloatVectors, _Mapping]] = ..., top_k: _Optional[int] = ..., every_step: _Optional[bool] = ...) -> None: ...

class LabelProbabilities(_message.Message):
    __slots__ = ("probabilities",)
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, probabilities: _Optional[_Iterable[float]] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("top", "final", "steps")
    TOP_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    top: _containers.RepeatedCompositeFieldContainer[TokenProbability]
    final: LabelProbabilities
    steps: _containers.RepeatedCompositeFieldContainer[LabelProbabilities]
    def __init__(self, top: _Optional[_Iterable[_Union[TokenProbability, _Mapping]]] = ..., final: _Optional[_Union[LabelProbabilities, _Mapping]] = ..., steps: _Optional[_Iterable[_Union[LabelProbabilities, _Mapping]]] = ...) -> None: ...

class TranslateRequest(_message.Message):
    __slots__ = ("model", "version", "source_tokens", "source_text", "max_tokens", "temperature", "top_k", "top_p", "seed")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_TEXT_FIELD_NUMBER: _ClassVar[int]
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    source_tokens: TokenIds
    source_text: str
    max_tokens: int
    temperature: float
    top_k: int
    top_p: float
    seed: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., source_tokens: _Optional[_Union[TokenIds, _Mapping]] = ..., source_text: _Optional[str] = ..., max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., seed: _Optional[int] = ...) -> None: ...

class TranslateResponse(_message.Message):
    __slots__ = ("tokens", "text", "finish_reason")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedCompositeFieldContainer[GeneratedToken]
    text: str
    finish_reason: FinishReason
    def __init__(self, tokens: _Optional[_Iterable[_Union[GeneratedToken, _Mapping]]] = ..., text: _Optional[str] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ...) -> None: ...

class ReloadModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RefusedPackage(_message.Message):
    __slots__ = ("path", "reason")
    PATH_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    path: str
    reason: str
    def __init__(self, path: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ReloadModelsResponse(_message.Message):
    __slots__ = ("models", "added", "removed", "refused")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    added: _containers.RepeatedScalarFieldContainer[str]
    removed: _containers.RepeatedScalarFieldContainer[str]
    refused: _containers.RepeatedCompositeFieldContainer[RefusedPackage]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., added: _Optional[_Iterable[str]] = ..., removed: _Optional[_Iterable[str]] = ..., refused: _Optional[_Iterable[_Union[RefusedPackage, _Mapping]]] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("models", "added", "removed", "refused")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    added: _containers.RepeatedScalarFieldContainer[str]
    removed: _containers.RepeatedScalarFieldContainer[str]
    refused: _containers.RepeatedCompositeFieldContainer[RefusedPackage]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., added: _Optional[_Iterable[str]] = ..., removed: _Optional[_Iterable[str]] = ..., refused: _Optional[_Iterable[_Union[RefusedPackage, _Mapping]]] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ("removed", "open_sessions")
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    OPEN_SESSIONS_FIELD_NUMBER: _ClassVar[int]
    removed: _containers.RepeatedScalarFieldContainer[str]
    open_sessions: int
    def __init__(self, removed: _Optional[_Iterable[str]] = ..., open_sessions: _Optional[int] = ...) -> None: ...
