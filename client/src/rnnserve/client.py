"""The blocking client."""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, TypeVar

import grpc

from rnnserve import _messages, _stubs, _validate
from rnnserve._channel import Connection, TLSConfig
from rnnserve.errors import typed_errors
from rnnserve.session import Session
from rnnserve.types import GeneratedChunk, ModelInfo, StepInput, StepResult
from rnnserve.v1 import rnnserve_pb2 as pb

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from rnnserve.session import GenerateOptions

_Request = TypeVar("_Request")
_Response = TypeVar("_Response")


class Client:
    """A blocking client for one rnnserve server.

    `address` is `host:port` (the port defaults to 50051) or a gRPC URI such as
    `unix:/run/rnnserve.sock`. `timeout` is the default deadline in seconds of every call
    (None: no deadline); each method's own `timeout=` overrides it for that call.
    `tls=True` connects with TLS using the system's trust store, or pass a `TLSConfig` with
    your own CA and client certificate. `token` is sent as `authorization: Bearer <token>`
    with every call, in clear text unless TLS is on.

    Use it as a context manager, or call `close()`, to release the connection.
    """

    def __init__(
        self,
        address: str = "127.0.0.1:50051",
        *,
        timeout: float | None = 30.0,
        tls: TLSConfig | bool | None = None,
        token: str | None = None,
    ) -> None:
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
    ) -> _Response:
        with typed_errors():
            return method(
                request,
                timeout=self._connection.deadline(timeout),
                metadata=self._connection.metadata,
            )

    # ------------------------------------------------------------ models

    def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """Every servable model version, sorted by name then version."""
        response = self._call(self._stub.ListModels, pb.ListModelsRequest(), timeout)
        return [_messages.model_info(model) for model in response.models]

    def get_model(self, name: str, version: int = 0, *, timeout: float | None = None) -> ModelInfo:
        """Metadata of one model version; version 0 is the highest loaded version."""
        request = _messages.get_model_request(name, version)
        return _messages.model_info(self._call(self._stub.GetModel, request, timeout))

    # ------------------------------------------------------------ sessions

    def create_session(
        self,
        model: str,
        version: int = 0,
        idle_timeout_s: int = 0,
        *,
        timeout: float | None = None,
    ) -> Session:
        """Open a session on a model version (0: the highest loaded) and return its handle.

        `idle_timeout_s` 0 takes the server's default; the server closes the session after
        that many idle seconds. Close it with `Session.close()` or a `with` block.
        """
        request = _messages.create_session_request(model, version, idle_timeout_s)
        response = self._call(self._stub.CreateSession, request, timeout)
        return Session(self, _messages.session_info(response))

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
        timeout: float | None = None,
    ) -> StepResult:
        """Feed token ids or text (exactly one) and return the next-token distribution.

        `top_k` None gives the server's default of 5 candidates; `return_distribution` adds
        the full distribution (large for big vocabularies).
        """
        step = StepInput(session_id, tokens, text, top_k, return_distribution)
        response = self._call(self._stub.Step, _messages.step_request(step), timeout)
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
        returned generator cancels the stream.
        """
        return self._step_stream(requests, _validate.timeout(timeout))

    def _step_stream(
        self, requests: Iterable[StepInput], deadline: float | None
    ) -> Generator[StepResult, None, None]:
        pump = _RequestPump(requests)
        call = self._stub.StepStream(
            iter(pump), timeout=deadline, metadata=self._connection.metadata
        )
        try:
            with typed_errors():
                for response in call:
                    yield _messages.step_result(response)
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
        timeout: float | None = None,
    ) -> Generator[GeneratedChunk, None, None]:
        """Sample tokens from a session, yielding them as the server produces them.

        `prompt` (text or token ids) is fed first; without it sampling continues from the
        session's state. Zero or None leaves a parameter at the server's default:
        `max_tokens` 64, `temperature` 1.0 (0 is greedy), no top-k or top-p limit, a random
        `seed`. Generation stops after `max_tokens`, at the model's end token, or once the
        text ends with one of the `stop` strings; the last chunk says why.

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
        )
        return self._generate(request, self._connection.deadline(timeout))

    def _generate(
        self, request: pb.GenerateRequest, deadline: float | None
    ) -> Generator[GeneratedChunk, None, None]:
        call = self._stub.Generate(request, timeout=deadline, metadata=self._connection.metadata)
        try:
            with typed_errors():
                for response in call:
                    yield _messages.generated_chunk(response)
        finally:
            # A no-op after the last message; otherwise it tells the server to stop sampling.
            call.cancel()  # type: ignore[no-untyped-call]

    def generate_text(
        self,
        session_id: str,
        prompt: str | Sequence[int] | None = None,
        **options: Unpack[GenerateOptions],
    ) -> str:
        """Like `generate`, but wait for the end and return the generated text."""
        return "".join(chunk.text for chunk in self.generate(session_id, prompt, **options))

    # ------------------------------------------------------------ health

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The server's status from the standard gRPC health service, e.g. "SERVING".

        `service` "" asks about the server as a whole; a service name it does not know gives
        `NotFound`.
        """
        response = self._call(self._health.Check, _stubs.health_request(service), timeout)
        return _stubs.health_status(response)


class _RequestPump:
    """Turns the caller's `StepInput`s into messages on gRPC's sending thread.

    gRPC answers an exception from a request iterator with a logged traceback and an
    UNKNOWN status; the pump instead ends the requests there and keeps the exception, so
    the caller gets their own error back.
    """

    def __init__(self, requests: Iterable[StepInput]) -> None:
        self._requests = requests
        self.failure: Exception | None = None

    def __iter__(self) -> Iterator[pb.StepRequest]:
        try:
            for step in self._requests:
                yield _messages.step_request(step)
        except Exception as error:
            self.failure = error
