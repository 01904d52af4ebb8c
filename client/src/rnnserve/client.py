"""The blocking client."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Generic, TypeVar

import grpc

from rnnserve import _messages, _stubs, _validate
from rnnserve._channel import Connection, TLSConfig
from rnnserve._retry import Replay, RetryPolicy, request_id, retryable
from rnnserve.errors import RnnServeError, typed_errors
from rnnserve.session import Session
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


class Client:
    """A blocking client for one rnnserve server.

    `address` is `host:port` (the port defaults to 50051) or a gRPC URI such as
    `unix:/run/rnnserve.sock`. `timeout` is the default deadline in seconds of every call
    (None: no deadline); each method's own `timeout=` overrides it for that call.
    `tls=True` connects with TLS using the system's trust store, or pass a `TLSConfig` with
    your own CA and client certificate. `token` is sent as `authorization: Bearer <token>`
    with every call, in clear text unless TLS is on.

    `retries` is how many more times a call is tried when the server is unreachable or a
    replica behind a load balancer goes away, where a retry is safe (reads, `step`,
    `generate`: those carry a request id so the server never applies one twice); 0 turns
    retrying off. See `rnnserve._retry` for the exact policy.

    Use it as a context manager, or call `close()`, to release the connection.
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
        self._channel = self._connection.open()
        self._stub = _stubs.rnnserve_stub(self._channel)
        self._health = _stubs.health_stub(self._channel)

    @property
    def address(self) -> str:
        """The gRPC target this client connects to."""
        return self._connection.target

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; calls in flight are cancelled."""
        self._channel.close()

    def _call(
        self,
        method: grpc.UnaryUnaryMultiCallable[_Request, _Response],
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
                    return method(
                        request,
                        timeout=self._connection.deadline(timeout),
                        metadata=self._connection.metadata,
                    )
            except RnnServeError as error:
                delay = next(delays, None) if retryable(error) else None
                if delay is None:
                    raise
                time.sleep(delay)

    # ------------------------------------------------------------ models

    def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Every servable model version, sorted by name then version."""
        response = self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout, retry=True)
        return [_messages.model_info(model) for model in response.models]

    def training_models(self, *, timeout: float | None = None) -> list[TrainingModel]:
        """The models still training into the server's repository (each is served once
        its package is written; until then calls on it fail with `Unavailable`)."""
        response = self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout, retry=True)
        return [_messages.training_model(model) for model in response.training]

    def get_model(self, name: str, version: int = 0, *, timeout: float | None = None) -> ModelInfo:
        """Metadata of one model version; version 0 is the highest loaded version."""
        request = _messages.get_model_request(name, version)
        return _messages.model_info(self._call(self._stub.GetModel, request, timeout, retry=True))

    def reload_models(self, *, timeout: float | None = None) -> ReloadResult:
        """Make the server rescan its model repository and report what changed.

        New packages and versions are loaded, removed ones unloaded (their open sessions keep
        working until closed), broken ones listed in `refused`; the others are unaffected.
        """
        response = self._call(
            self._stub.ReloadModels, pb.ReloadModelsRequest(), timeout, retry=True
        )
        return _messages.reload_result(response)

    def load_model(self, name: str, *, timeout: float | None = None) -> ReloadResult:
        """Load one model from the server's repository, leaving every other model as it is.

        The server rereads the model's config.toml and loads the versions its version
        policy serves, bringing back any that `unload_model` took out of service;
        `ReloadResult.models` lists the model's versions loaded afterwards. With
        authentication on, only admin callers may (`PermissionDenied` otherwise).
        """
        request = _messages.load_model_request(name)
        response = self._call(self._stub.LoadModel, request, timeout, retry=True)
        return _messages.reload_result(response)

    def unload_model(
        self, name: str, version: int = 0, *, timeout: float | None = None
    ) -> UnloadResult:
        """Take a model (`version` 0: every version) out of service until `load_model`.

        New sessions naming it get `NotFound`; sessions already open on it keep working
        until closed or expired (`UnloadResult.open_sessions` counts them). With
        authentication on, only admin callers may.
        """
        request = _messages.unload_model_request(name, version)
        return _messages.unload_result(self._call(self._stub.UnloadModel, request, timeout))

    def get_vocabulary(
        self, model: str, version: int = 0, *, timeout: float | None = None
    ) -> VocabularyListing:
        """A token model's whole vocabulary (fetched a page at a time) and its
        tokenizer's rules; `FailedPrecondition` for a model of vector inputs."""
        first = self._call(
            self._stub.GetVocabulary,
            _messages.vocabulary_request(model, version, 0),
            timeout,
            retry=True,
        )
        tokens = list(first.tokens)
        while len(tokens) < first.size:
            request = _messages.vocabulary_request(model, first.version, len(tokens))
            page = self._call(self._stub.GetVocabulary, request, timeout, retry=True)
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
    ) -> Session:
        """Open a session on a model version (0: the highest loaded) and return its handle.

        `idle_timeout_s` 0 takes the server's default; the server closes the session after
        that many idle seconds. Close it with `Session.close()` or a `with` block.

        `seed` fixes the session's sampling generator (used by `generate` calls without a seed
        of their own). `state` imports bytes from `export_session`, from this or another
        server: the session continues where the exported one was, sampling generator included
        (version 0 then means the version the bytes were exported from). An encoder-decoder
        model (`ModelInfo.initial_state` "encoder") needs the `source` to encode, as text or
        token ids; a conditional generator ("condition") one of `ModelInfo.conditions`.
        """
        request = _messages.create_session_request(
            model,
            version,
            idle_timeout_s,
            seed=seed,
            state=state,
            source=source,
            condition=condition,
        )
        response = self._call(self._stub.CreateSession, request, timeout)
        return Session(self, _messages.session_info(response))

    def fork_session(
        self, session_id: str, idle_timeout_s: int = 0, *, timeout: float | None = None
    ) -> Session:
        """Copy a session and return the copy's handle.

        The copy has the same state, step count and sampling generator; from then on the two
        evolve independently (e.g. for beam search). `idle_timeout_s` 0 takes the server's
        default.
        """
        request = _messages.fork_session_request(session_id, idle_timeout_s)
        response = self._call(self._stub.ForkSession, request, timeout)
        return Session(self, _messages.session_info(response))

    def export_session(self, session_id: str, *, timeout: float | None = None) -> bytes:
        """A session's state as bytes that `create_session(state=...)` imports on any server
        serving the same model version; the session stays open."""
        request = _messages.export_session_request(session_id)
        return self._call(self._stub.ExportSession, request, timeout, retry=True).state

    def close_session(self, session_id: str, *, timeout: float | None = None) -> int:
        """Close a session; returns the number of tokens it had consumed."""
        request = _messages.close_session_request(session_id)
        return self._call(self._stub.CloseSession, request, timeout).steps

    # ------------------------------------------------------------ steps

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
    ) -> StepResult:
        """Feed token ids or text (exactly one) and return the next-token distribution.

        `top_k` None gives the server's default of 5 candidates; `return_distribution` adds
        the full distribution (large for big vocabularies).
        """
        step = StepInput(session_id, tokens, text, top_k, return_distribution, vectors)
        request = _messages.step_request(step)
        request.request_id = request_id()
        response = self._call(self._stub.Step, request, timeout, retry=True)
        return _messages.step_result(response)

    def step_stream(
        self, requests: Iterable[StepInput], *, timeout: float | None = None
    ) -> Generator[StepResult, None, None]:
        """Apply many steps over one bidirectional stream, yielding one result per request.

        gRPC reads `requests` on a background thread as fast as the stream accepts them. For
        requests that depend on earlier results (type-ahead, client-side decoding), feed a
        blocking iterator, e.g. `iter(queue.get, None)`, and put each request after reading
        the previous result. Results come in request order. The stream has no deadline unless
        `timeout` is given, since it lives as long as `requests` does. An exception raised by
        `requests` is re-raised here after the results of the requests before it. Closing the
        returned generator cancels the stream. The first failing request ends the stream with
        its error.
        """
        return self._stream(
            self._stub.StepStream,
            requests,
            _messages.step_request,
            _messages.step_result,
            _validate.timeout(timeout),
        )

    def step_many(
        self, batches: Iterable[Sequence[StepInput]], *, timeout: float | None = None
    ) -> Generator[list[StepResult | RnnServeError], None, None]:
        """Apply batches of steps, each naming any sessions, over one bidirectional stream.

        For callers that front many users (a gateway): each batch travels as one message and
        is answered by one list, in batch order, holding per step either its `StepResult` or
        its typed error (an `RnnServeError` returned, not raised). A failing step fails alone:
        the other steps of the batch are applied. Steps of one session within a batch are
        applied in order. Every step of a batch shares one `top_k`, and none returns the
        full distribution (`ValueError` otherwise; use `step_stream` for those): a batch
        travels as a few packed columns. Only a batch longer than the server's
        `max_steps_per_message` ends the stream, with `InvalidArgument`. Streaming,
        deadline and closing work as in `step_stream`.
        """
        stream = _messages.StepManyStream()
        return self._stream(
            self._stub.StepMany,
            batches,
            stream.request,
            stream.outcomes,
            _validate.timeout(timeout),
        )

    def _stream(
        self,
        method: grpc.StreamStreamMultiCallable[_Request, _Response],
        requests: Iterable[_Item],
        to_message: Callable[[_Item], _Request],
        from_message: Callable[[_Response], _Result],
        deadline: float | None,
    ) -> Generator[_Result, None, None]:
        pump = _RequestPump(requests, to_message)
        call = method(iter(pump), timeout=deadline, metadata=self._connection.metadata)
        try:
            with typed_errors():
                for response in call:
                    yield from_message(response)
        finally:
            call.cancel()  # type: ignore[no-untyped-call]
        if pump.failure is not None:
            raise pump.failure

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
    ) -> Generator[GeneratedChunk, None, None]:
        """Sample tokens from a session, yielding them as the server produces them.

        `prompt` (text or token ids) is fed first; without it sampling continues from the
        session's state. Zero or None leaves a parameter at the server's default:
        `max_tokens` 64, `temperature` 1.0 (0 is greedy), no top-k or top-p limit, the
        session's sampling generator (random unless the session was created with a `seed`).
        Generation stops after `max_tokens`, at the model's end token, once the text ends with
        one of the `stop` strings, or after one of the `stop_token_ids` (which is returned);
        the last chunk says why. `tokens_per_message` above 1 lets the server put up to that
        many tokens in one chunk (less transport work per token, a little more latency).

        Arguments are checked now; the call starts on the first iteration. Leaving the loop
        early or closing the generator cancels the call, so the server stops sampling.
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

    def _generate(
        self, request: pb.GenerateRequest, deadline: float | None
    ) -> Generator[GeneratedChunk, None, None]:
        delays, replay = self._retry.delays(), Replay()
        while True:
            call = self._stub.Generate(
                request, timeout=deadline, metadata=self._connection.metadata
            )
            try:
                with typed_errors():
                    for response in call:
                        chunk = replay.fresh(_messages.generated_chunk(response))
                        if chunk is not None:
                            yield chunk
                return
            except RnnServeError as error:
                delay = next(delays, None) if retryable(error) else None
                if delay is None:
                    raise
                time.sleep(delay)
                replay.restart()
            finally:
                # A no-op after the last message; else it tells the server to stop sampling.
                call.cancel()  # type: ignore[no-untyped-call]

    def generate_text(
        self,
        session_id: str,
        prompt: str | Sequence[int] | None = None,
        **options: Unpack[GenerateOptions],
    ) -> str:
        """Like `generate`, but wait for the end and return the generated text."""
        return "".join(chunk.text for chunk in self.generate(session_id, prompt, **options))

    # ------------------------------------------------------------ one-call conveniences

    def classify(
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
        """Classify a whole sequence, `text` or `tokens` (exactly one), with a label or
        sigmoid model.

        No session is kept. `top_k` None gives the server's default of 5 labels; `every_step`
        adds the label probabilities after every token. A model whose output is a vocabulary
        gives `FailedPrecondition`.
        """
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
            self._call(self._stub.Classify, request, timeout, retry=True)
        )

    def translate(
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
        """Encode `source` (text or token ids) and decode it with an encoder-decoder model.

        No session is kept. Decoding is greedy unless `temperature` is given; it stops at the
        end token or after `max_tokens` (0: the server's default of 64). Other models give
        `FailedPrecondition`.
        """
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
            self._call(self._stub.Translate, request, timeout, retry=True)
        )

    # ------------------------------------------------------------ health

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The server's status from the standard gRPC health service, e.g. "SERVING".

        `service` "" asks about the server as a whole; a service name it does not know gives
        `NotFound`.
        """
        with _stubs.health_errors(service):
            response = self._call(
                self._health.Check, _stubs.health_request(service), timeout, retry=True
            )
        return _stubs.health_status(response)


class _RequestPump(Generic[_Item, _Request]):
    """Turns the caller's items into messages on gRPC's sending thread.

    gRPC answers an exception from a request iterator with a logged traceback and an
    UNKNOWN status; the pump instead ends the requests there and keeps the exception, so
    the caller gets their own error back.
    """

    def __init__(self, requests: Iterable[_Item], convert: Callable[[_Item], _Request]) -> None:
        self._requests = requests
        self._convert = convert
        self.failure: Exception | None = None

    def __iter__(self) -> Iterator[_Request]:
        try:
            for item in self._requests:
                yield self._convert(item)
        except Exception as error:
            self.failure = error
