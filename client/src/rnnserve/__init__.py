"""Python client for rnnserve, stateful gRPC serving of RNN and GRU models.

    from rnnserve import Client

    with Client("127.0.0.1:50051") as client, client.create_session("char-gru") as session:
        for chunk in session.generate("Once upon a time", max_tokens=100):
            print(chunk.text, end="", flush=True)

`AsyncClient` offers the same methods for asyncio. Failed calls raise a subclass of
`RnnServeError` named after the gRPC status code.
"""

from rnnserve._channel import TLSConfig
from rnnserve._version import __version__
from rnnserve.aio import AsyncClient
from rnnserve.client import Client
from rnnserve.errors import (
    Aborted,
    Cancelled,
    DataLoss,
    DeadlineExceeded,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RnnServeError,
    Unauthenticated,
    Unavailable,
)
from rnnserve.session import AsyncSession, GenerateOptions, OpeningSession, Session
from rnnserve.types import (
    ClassifyResult,
    GeneratedChunk,
    GeneratedToken,
    ModelInfo,
    RefusedPackage,
    ReloadResult,
    SessionInfo,
    StatePart,
    StepInput,
    StepResult,
    TokenizerRules,
    TokenProb,
    TrainingModel,
    TranslateResult,
    UnloadResult,
    Vocabulary,
    VocabularyListing,
)

__all__ = [
    "Aborted",
    "AsyncClient",
    "AsyncSession",
    "Cancelled",
    "ClassifyResult",
    "Client",
    "DataLoss",
    "DeadlineExceeded",
    "FailedPrecondition",
    "GenerateOptions",
    "GeneratedChunk",
    "GeneratedToken",
    "Internal",
    "InvalidArgument",
    "ModelInfo",
    "NotFound",
    "OpeningSession",
    "PermissionDenied",
    "RefusedPackage",
    "ReloadResult",
    "ResourceExhausted",
    "RnnServeError",
    "Session",
    "SessionInfo",
    "StatePart",
    "StepInput",
    "StepResult",
    "TLSConfig",
    "TokenProb",
    "TokenizerRules",
    "TrainingModel",
    "TranslateResult",
    "Unauthenticated",
    "Unavailable",
    "UnloadResult",
    "Vocabulary",
    "VocabularyListing",
    "__version__",
]
