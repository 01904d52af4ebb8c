"""The asyncio client: the methods of `Client`, as coroutines and async iterators."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Iterable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import grpc
import grpc.aio

from rnnserve import _messages, _stubs, _validate
from rnnserve._aio_status import FirstStatus
from rnnserve._channel import Connection, TLSConfig
from rnnserve._retry import Replay, RetryPolicy, request_id, retryable
from rnnserve.errors import RnnServeError, typed_errors
from rnnserve.session import AsyncSession, OpeningSession
from rnnserve.types import (
    ClassifyResult,
    GeneratedChunk,
    ModelInfo,
    ReloadResult,
    StepInput,
    StepResult,
    TrainingModel,
    TranslateResult,
    UnloadResult,
    VocabularyListing,
)
from rnnserve.v1 import rnnserve_pb2 as pb

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from rnnserve.session import GenerateOptions

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")
_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


class AsyncClient:
    """An asyncio client for one rnnserve server; arguments as for `rnnserve.Client`.

    Create it inside the event loop that uses it (gRPC binds the channel to that loop), and
    use it with `async with`, or `await close()`, to release the connection.
    """

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        *,
        timeout: float | None = 30.0,
        tls: TLSConfig | bool | None = None,
        token: str | None = None,
        retries: int = 3,
    ) -> None:
        self._retry = RetryPolicy.of(retries)
        self._connection = Connection.resolve(address, timeout, tls, token)
        self._channel = self._connection.open_aio()
        self._stub = _stubs.async_rnnserve_stub(self._channel)
        self._health = _stubs.async_health_stub(self._channel)

    @property
    def address(self) -> str:
        """The gRPC target this client connects to."""
        return self._connection.target

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection; calls in flight are cancelled."""
        await self._channel.close(None)

    async def _call(
        self,
        method: grpc.aio.UnaryUnaryMultiCallable[_Request, _Response],
        request: _Request,
        timeout: float | None,
        *,
        retry: bool = False,
    ) -> _Response:
        """One unary call; with `retry` (a call safe to repeat) tried by the policy."""
        delays = self._retry.delays() if retry else iter(())
        while True:
            try:
                with typed_errors():
                    return await method(
                        request,
                        timeout=self._connection.deadline(timeout),
                        metadata=self._connection.metadata,
                    )
            except RnnServeError as error:
                delay = next(delays, None) if retryable(error) else None
                if delay is None:
                    raise
                await asyncio.sleep(delay)

    # ------------------------------------------------------------ models

    async def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Every servable model version, sorted by name then version."""
        response = await self._call(
            self._stub.ListModels, pb.ListModelsRequest(), timeout, retry=True
        )
        return [_messages.model_info(model) for model in response.models]

    async def training_models(self, *, timeout: float | None = None) -> list[TrainingModel]:
        """The models still training into the server's repository (each is served once
        its package is written; until then calls on it fail with `Unavailable`)."""
        response = await self._call(
            self._stub.ListModels, pb.ListModelsRequest(), timeout, retry=True
        )
        return [_messages.training_model(model) for model in response.training]

    async def get_model(
        self, name: str, version: int = 0, *, timeout: float | None = None
    ) -> ModelInfo:
        """Metadata of one model version; version 0 is the highest loaded version."""
        request = _messages.get_model_request(name, version)
        return _messages.model_info(
            await self._call(self._stub.GetModel, request, timeout, retry=True)
        )

    async def reload_models(self, *, timeout: float | None = None) -> ReloadResult:
        """Make the server rescan its model repository (see `Client.reload_models`)."""
        response = await self._call(
            self._stub.ReloadModels, pb.ReloadModelsRequest(), timeout, retry=True
        )
        return _messages.reload_result(response)

    async def load_model(self, name: str, *, timeout: float | None = None) -> ReloadResult:
        """Load one model from the server's repository (see `Client.load_model`)."""
        request = _messages.load_model_request(name)
        response = await self._call(self._stub.LoadModel, request, timeout, retry=True)
        return _messages.reload_result(response)

    async def unload_model(
        self, name: str, version: int = 0, *, timeout: float | None = None
    ) -> UnloadResult:
        """Take a model out of service until `load_model` (see `Client.unload_model`)."""
        request = _messages.unload_model_request(name, version)
        return _messages.unload_result(await self._call(self._stub.UnloadModel, request, timeout))

    async def get_vocabulary(
        self, model: str, version: int = 0, *, timeout: float | None = None
    ) -> VocabularyListing:
        """A token model's whole vocabulary (fetched a page at a time) and its
        tokenizer's rules; `FailedPrecondition` for a model of vector inputs."""
        first = await self._call(
            self._stub.GetVocabulary,
            _messages.vocabulary_request(model, version, 0),
            timeout,
            retry=True,
        )
        tokens = list(first.tokens)
        while len(tokens) < first.size:
            request = _messages.vocabulary_request(model, first.version, len(tokens))
            page = await self._call(self._stub.GetVocabulary, request, timeout, retry=True)
            tokens += page.tokens
        return VocabularyListing(
            model=first.model,
            version=first.version,
            tokens=tokens,
            special_tokens=dict(first.special_tokens),
            rules=_messages.tokenizer_rules(first.tokenizer),
        )

    # ------------------------------------------------------------ sessions

    def create_session(
        self,
        model: str,
        version: int = 0,
        idle_timeout_s: int = 0,
        *,
        seed: int | None = None,
        state: bytes | None = None,
        source: str | Sequence[int] | None = None,
        condition: str | None = None,
        timeout: float | None = None,
    ) -> OpeningSession:
        """Open a session on a model version (see `Client.create_session`).

        `await` it for the handle, or use it directly in `async with`, which closes the
        session at the end: `async with client.create_session("char-gru") as session:`.
        """

        async def opening() -> AsyncSession:
            request = _messages.create_session_request(
                model,
                version,
                idle_timeout_s,
                seed=seed,
                state=state,
                source=source,
                condition=condition,
            )
            response = await self._call(self._stub.CreateSession, request, timeout)
            return AsyncSession(self, _messages.session_info(response))

        return OpeningSession(opening())

    def fork_session(
        self, session_id: str, idle_timeout_s: int = 0, *, timeout: float | None = None
    ) -> OpeningSession:
        """Copy a session (see `Client.fork_session`): `await` it for the copy's handle, or
        `async with` it to close the copy at the end."""

        async def opening() -> AsyncSession:
            request = _messages.fork_session_request(session_id, idle_timeout_s)
            response = await self._call(self._stub.ForkSession, request, timeout)
            return AsyncSession(self, _messages.session_info(response))

        return OpeningSession(opening())

    async def export_session(self, session_id: str, *, timeout: float | None = None) -> bytes:
        """A session's state as bytes for `create_session(state=...)` (see `Client`)."""
        request = _messages.export_session_request(session_id)
        return (await self._call(self._stub.ExportSession, request, timeout, retry=True)).state

    async def close_session(self, session_id: str, *, timeout: float | None = None) -> int:
        """Close a session; returns the number of tokens it had consumed."""
        request = _messages.close_session_request(session_id)
        return (await self._call(self._stub.CloseSession, request, timeout)).steps

    # ------------------------------------------------------------ steps

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
    ) -> StepResult:
        """Feed token ids or text (exactly one) and return the next-token distribution."""
        step = StepInput(session_id, tokens, text, top_k, return_distribution, vectors)
        request = _messages.step_request(step)
        request.request_id = request_id()
        response = await self._call(self._stub.Step, request, timeout, retry=True)
        return _messages.step_result(response)

    def step_stream(
        self,
        requests: AsyncIterable[StepInput] | Iterable[StepInput],
        *,
        timeout: float | None = None,
    ) -> AsyncGenerator[StepResult, None]:
        """Apply many steps over one bidirectional stream (see `Client.step_stream`).

        `requests` may be an async or a plain iterable. Leaving the `async for` early, closing
        the generator or cancelling the task cancels the stream.
        """
        return self._stream(
            self._stub.StepStream,
            requests,
            _messages.step_request,
            _messages.step_result,
            _validate.timeout(timeout),
        )

    def step_many(
        self,
        batches: AsyncIterable[Sequence[StepInput]] | Iterable[Sequence[StepInput]],
        *,
        timeout: float | None = None,
    ) -> AsyncGenerator[list[StepResult | RnnServeError], None]:
        """Apply batches of steps over one bidirectional stream (see `Client.step_many`).

        Each batch is answered by one list holding per step its `StepResult` or its typed
        error (returned, not raised). `batches` may be an async or a plain iterable.
        """
        stream = _messages.StepManyStream()
        return self._stream(
            self._stub.StepMany,
            batches,
            stream.request,
            stream.outcomes,
            _validate.timeout(timeout),
        )

    async def _stream(
        self,
        method: grpc.aio.StreamStreamMultiCallable[_Request, _Response],
        requests: AsyncIterable[_Item] | Iterable[_Item],
        to_message: Callable[[_Item], _Request],
        from_message: Callable[[_Response], _Result],
        deadline: float | None,
    ) -> AsyncGenerator[_Result, None]:
        failures: list[Exception] = []
        call = method(
            _pump(requests, to_message, failures),
            timeout=deadline,
            metadata=self._connection.metadata,
        )
        first_status = FirstStatus(call)
        try:
            async for response in call:
                yield from_message(response)
        except grpc.RpcError as error:
            raise first_status.error_for(error) from None
        finally:
            call.cancel()
        if failures:
            raise failures[0]

    # ------------------------------------------------------------ generation

    def generate(
        self,
        session_id: str,
        prompt: str | Sequence[int] | None = None,
        *,
        max_tokens: int = 0,
        temperature: float | None = None,
        top_k: int = 0,
        top_p: float | None = None,
        seed: int | None = None,
        stop: str | Sequence[str] = (),
        stop_token_ids: Sequence[int] = (),
        tokens_per_message: int = 0,
        timeout: float | None = None,
    ) -> AsyncGenerator[GeneratedChunk, None]:
        """Sample tokens from a session as they are produced (see `Client.generate`).

        Use `async for`; leaving the loop early, `aclose()` or cancelling the task cancels
        the call, so the server stops sampling.
        """
        request = _messages.generate_request(
            session_id,
            prompt,
            max_tokens=max_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
            stop=stop,
            stop_token_ids=stop_token_ids,
            tokens_per_message=tokens_per_message,
        )
        request.request_id = request_id()
        return self._generate(request, self._connection.deadline(timeout))

    async def _generate(
        self, request: pb.GenerateRequest, deadline: float | None
    ) -> AsyncGenerator[GeneratedChunk, None]:
        delays, replay = self._retry.delays(), Replay()
        while True:
            call = self._stub.Generate(
                request, timeout=deadline, metadata=self._connection.metadata
            )
            try:
                with typed_errors():
                    async for response in call:
                        chunk = replay.fresh(_messages.generated_chunk(response))
                        if chunk is not None:
                            yield chunk
                return
            except RnnServeError as error:
                delay = next(delays, None) if retryable(error) else None
                if delay is None:
                    raise
                await asyncio.sleep(delay)
                replay.restart()
            finally:
                call.cancel()

    async def generate_text(
        self,
        session_id: str,
        prompt: str | Sequence[int] | None = None,
        **options: Unpack[GenerateOptions],
    ) -> str:
        """Like `generate`, but wait for the end and return the generated text."""
        return "".join([chunk.text async for chunk in self.generate(session_id, prompt, **options)])

    # ------------------------------------------------------------ one-call conveniences

    async def classify(
        self,
        model: str,
        text: str | None = None,
        *,
        tokens: Sequence[int] | None = None,
        vectors: Sequence[Sequence[float]] | None = None,
        version: int = 0,
        top_k: int | None = None,
        every_step: bool = False,
        timeout: float | None = None,
    ) -> ClassifyResult:
        """Classify a whole sequence with a label or sigmoid model (see `Client.classify`)."""
        request = _messages.classify_request(
            model,
            text,
            tokens,
            version=version,
            top_k=top_k,
            every_step=every_step,
            vectors=vectors,
        )
        return _messages.classify_result(
            await self._call(self._stub.Classify, request, timeout, retry=True)
        )

    async def translate(
        self,
        model: str,
        source: str | Sequence[int],
        *,
        version: int = 0,
        max_tokens: int = 0,
        temperature: float | None = None,
        top_k: int = 0,
        top_p: float | None = None,
        seed: int | None = None,
        timeout: float | None = None,
    ) -> TranslateResult:
        """Encode and decode `source` with an encoder-decoder model (see `Client.translate`)."""
        request = _messages.translate_request(
            model,
            source,
            version=version,
            max_tokens=max_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            seed=seed,
        )
        return _messages.translate_result(
            await self._call(self._stub.Translate, request, timeout, retry=True)
        )

    # ------------------------------------------------------------ health

    async def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The server's status from the standard gRPC health service, e.g. "SERVING"."""
        with _stubs.health_errors(service):
            response = await self._call(
                self._health.Check, _stubs.health_request(service), timeout, retry=True
            )
        return _stubs.health_status(response)


async def _pump(
    requests: AsyncIterable[_Item] | Iterable[_Item],
    convert: Callable[[_Item], _Request],
    failures: list[Exception],
) -> AsyncGenerator[_Request, None]:
    """Turns the caller's items into messages, keeping any exception they raise.

    gRPC answers an exception from a request iterator by cancelling the call, so the caller
    would see only CANCELLED; ending the requests there instead and handing the exception
    back to the stream's reader reports the caller's own error where they are waiting.
    """
    try:
        if isinstance(requests, AsyncIterable):
            async for item in requests:
                yield convert(item)
        else:
            for item in requests:
                yield convert(item)
    except Exception as error:
        failures.append(error)
