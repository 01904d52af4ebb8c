"""Session handles: a session id bound to the client that created it.

The handles only forward to their client's methods; they add closing on `with` exit and
tolerate a session the server has already dropped (expired), since closing it is then done.
What a handle needs of its client is stated here (`SessionClient`, `AsyncSessionClient`),
so this module imports neither client: they import it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Coroutine, Generator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TypedDict

from rnnserve.errors import NotFound, RnnServeError
from rnnserve.types import GeneratedChunk, ModelInfo, SessionInfo, StepResult

if TYPE_CHECKING:
    from typing_extensions import Unpack


class GenerateOptions(TypedDict, total=False):
    """The keyword arguments of `Client.generate` after the prompt."""

    max_tokens: int
    temperature: float | None
    top_k: int
    top_p: float | None
    seed: int | None
    stop: str | Sequence[str]
    stop_token_ids: Sequence[int]
    tokens_per_message: int
    timeout: float | None


class SessionClient(Protocol):
    """What a `Session` calls on its client (`rnnserve.Client` has all of it)."""

    def step(
        self,
        session_id: str,
        tokens: Sequence[int] | None = None,
        text: str | None = None,
        top_k: int | None = None,
        return_distribution: bool = False,
        *,
        vectors: Sequence[Sequence[float]] | None = None,
        timeout: float | None = None,
    ) -> StepResult: ...

    def generate(
        self,
        session_id: str,
        prompt: str | Sequence[int] | None = None,
        **options: Unpack[GenerateOptions],
    ) -> Generator[GeneratedChunk, None, None]: ...

    def generate_text(
        self,
        session_id: str,
        prompt: str | Sequence[int] | None = None,
        **options: Unpack[GenerateOptions],
    ) -> str: ...

    def fork_session(
        self, session_id: str, idle_timeout_s: int = 0, *, timeout: float | None = None
    ) -> Session: ...

    def export_session(self, session_id: str, *, timeout: float | None = None) -> bytes: ...

    def close_session(self, session_id: str, *, timeout: float | None = None) -> int: ...


class AsyncSessionClient(Protocol):
    """What an `AsyncSession` calls on its client (`rnnserve.AsyncClient` has all of it)."""

    async def step(
        self,
        session_id: str,
        tokens: Sequence[int] | None = None,
        text: str | None = None,
        top_k: int | None = None,
        return_distribution: bool = False,
        *,
        vectors: Sequence[Sequence[float]] | None = None,
        timeout: float | None = None,
    ) -> StepResult: ...

    def generate(
        self,
        session_id: str,
        prompt: str | Sequence[int] | None = None,
        **options: Unpack[GenerateOptions],
    ) -> AsyncGenerator[GeneratedChunk, None]: ...

    async def generate_text(
        self,
        session_id: str,
        prompt: str | Sequence[int] | None = None,
        **options: Unpack[GenerateOptions],
    ) -> str: ...

    def fork_session(
        self, session_id: str, idle_timeout_s: int = 0, *, timeout: float | None = None
    ) -> OpeningSession: ...

    async def export_session(self, session_id: str, *, timeout: float | None = None) -> bytes: ...

    async def close_session(self, session_id: str, *, timeout: float | None = None) -> int: ...


class _SessionBase:
    def __init__(self, info: SessionInfo) -> None:
        self.info = info
        self._closed = False

    @property
    def id(self) -> str:
        """The session id."""
        return self.info.id

    @property
    def model(self) -> ModelInfo:
        """The model version the session is bound to."""
        return self.info.model

    @property
    def idle_timeout_s(self) -> int:
        """Seconds of inactivity after which the server closes the session."""
        return self.info.idle_timeout_s

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.id} {self.model.name}/{self.model.version} {state}>"


class Session(_SessionBase):
    """A session opened by `Client.create_session`; closes itself at the end of a `with`."""

    def __init__(self, client: SessionClient, info: SessionInfo) -> None:
        super().__init__(info)
        self._client = client

    def step(
        self,
        tokens: Sequence[int] | None = None,
        text: str | None = None,
        top_k: int | None = None,
        return_distribution: bool = False,
        *,
        vectors: Sequence[Sequence[float]] | None = None,
        timeout: float | None = None,
    ) -> StepResult:
        """`Client.step` on this session."""
        return self._client.step(
            self.id, tokens, text, top_k, return_distribution, vectors=vectors, timeout=timeout
        )

    def generate(
        self, prompt: str | Sequence[int] | None = None, **options: Unpack[GenerateOptions]
    ) -> Generator[GeneratedChunk, None, None]:
        """`Client.generate` on this session."""
        return self._client.generate(self.id, prompt, **options)

    def generate_text(
        self, prompt: str | Sequence[int] | None = None, **options: Unpack[GenerateOptions]
    ) -> str:
        """`Client.generate_text` on this session."""
        return self._client.generate_text(self.id, prompt, **options)

    def fork(self, idle_timeout_s: int = 0, *, timeout: float | None = None) -> Session:
        """`Client.fork_session` on this session: an independent copy, as a new handle."""
        return self._client.fork_session(self.id, idle_timeout_s, timeout=timeout)

    def export(self, *, timeout: float | None = None) -> bytes:
        """`Client.export_session` on this session: bytes for `create_session(state=...)`."""
        return self._client.export_session(self.id, timeout=timeout)

    def close(self, *, timeout: float | None = None) -> int | None:
        """Close the session; returns the tokens it consumed, or None if it was already gone."""
        if self._closed:
            return None
        try:
            steps: int | None = self._client.close_session(self.id, timeout=timeout)
        except NotFound:
            steps = None
        self._closed = True
        return steps

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self.close()
        except RnnServeError:
            # The error that ended the block matters more than the failed cleanup.
            if exc is None:
                raise


class AsyncSession(_SessionBase):
    """A session opened by `AsyncClient.create_session`; closes itself after `async with`."""

    def __init__(self, client: AsyncSessionClient, info: SessionInfo) -> None:
        super().__init__(info)
        self._client = client

    async def step(
        self,
        tokens: Sequence[int] | None = None,
        text: str | None = None,
        top_k: int | None = None,
        return_distribution: bool = False,
        *,
        vectors: Sequence[Sequence[float]] | None = None,
        timeout: float | None = None,
    ) -> StepResult:
        """`AsyncClient.step` on this session."""
        return await self._client.step(
            self.id, tokens, text, top_k, return_distribution, vectors=vectors, timeout=timeout
        )

    def generate(
        self, prompt: str | Sequence[int] | None = None, **options: Unpack[GenerateOptions]
    ) -> AsyncGenerator[GeneratedChunk, None]:
        """`AsyncClient.generate` on this session."""
        return self._client.generate(self.id, prompt, **options)

    async def generate_text(
        self, prompt: str | Sequence[int] | None = None, **options: Unpack[GenerateOptions]
    ) -> str:
        """`AsyncClient.generate_text` on this session."""
        return await self._client.generate_text(self.id, prompt, **options)

    def fork(self, idle_timeout_s: int = 0, *, timeout: float | None = None) -> OpeningSession:
        """`AsyncClient.fork_session` on this session: an independent copy, as a new handle
        (`await` it, or `async with` it to close the copy at the end)."""
        return self._client.fork_session(self.id, idle_timeout_s, timeout=timeout)

    async def export(self, *, timeout: float | None = None) -> bytes:
        """`AsyncClient.export_session` on this session."""
        return await self._client.export_session(self.id, timeout=timeout)

    async def close(self, *, timeout: float | None = None) -> int | None:
        """Close the session; returns the tokens it consumed, or None if it was already gone."""
        if self._closed:
            return None
        try:
            steps: int | None = await self._client.close_session(self.id, timeout=timeout)
        except NotFound:
            steps = None
        self._closed = True
        return steps

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            await self.close()
        except RnnServeError:
            if exc is None:
                raise


class OpeningSession:
    """A session being opened by `AsyncClient.create_session` or `fork_session`.

    `await` it for the `AsyncSession`, or use it directly in `async with`, which opens
    the session on entry and closes it on exit: `async with client.create_session(m) as s`
    (and `async with await client.create_session(m) as s` works as well).
    """

    def __init__(self, opening: Coroutine[Any, Any, AsyncSession]) -> None:
        self._opening = opening
        self._session: AsyncSession | None = None

    def __await__(self) -> Generator[Any, None, AsyncSession]:
        return self._opening.__await__()

    async def __aenter__(self) -> AsyncSession:
        self._session = await self._opening
        return self._session

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.__aexit__(exc_type, exc, traceback)
