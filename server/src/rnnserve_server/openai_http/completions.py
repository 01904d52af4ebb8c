"""One ``POST /v1/completions`` over the engine: its model and session, its generation,
and the text as OpenAI returns it.

Without ``session_id`` a completion runs in a session of its own that is closed when it
ends (as stateless as OpenAI's); with ``keep_session`` that session stays open and its id
comes back; with ``session_id`` the completion continues that session (made by an
earlier completion, or by rnnserve.v1 CreateSession): the prompt is fed on top of its
state, so a conversation sends only what is new.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Sequence

import anyio

from rnnserve_server.engine import Engine
from rnnserve_server.errors import NotFound, ServiceError
from rnnserve_server.generating import GenerateOptions
from rnnserve_server.generation import GenerateEvent
from rnnserve_server.inputs import NO_INPUT, TokenInput, encode_input
from rnnserve_server.openai_http.schema import ApiError, CompletionRequest, from_service_error
from rnnserve_server.repository import Model, Repository
from rnnserve_server.session import Session

# Models that continue text from their own start (not from a source or a condition).
LANGUAGE_MODEL_STARTS = ("zeros", "after_token")
OPENAI_MAX_TOKENS = 16  # OpenAI's default max_tokens for completions
FINISH = {"length": "length", "end_token": "stop", "stop_string": "stop", "stop_token": "stop"}


def is_language_model(model: Model) -> bool:
    manifest = model.package.manifest
    return manifest.output.kind == "vocabulary" and (
        manifest.initial_state.kind in LANGUAGE_MODEL_STARTS
    )


def language_model(repository: Repository, name: str) -> Model:
    """The model a request names, "name" or "name:version"; 404 as OpenAI words it."""
    base, _, version = name.partition(":")
    missing = ApiError(
        404, f"The model '{name}' does not exist", param="model", code="model_not_found"
    )
    if version and not version.isdigit():
        raise missing
    try:
        model = repository.get(base, int(version or 0))
    except NotFound:
        raise missing from None
    if not is_language_model(model):
        raise ApiError(
            400,
            f"model '{name}' is not a language model (its output is "
            f"{model.package.manifest.output.kind}, it starts from "
            f"{model.package.manifest.initial_state.kind}); /v1/completions serves models "
            "that continue text (GET /v1/models lists them)",
            param="model",
        )
    return model


def prompt_input(prompt: str | list[int] | list[str] | list[list[int]]) -> TokenInput:
    """A prompt of text or token ids (one of them, as OpenAI's SDKs also send it: a list
    of one); empty: generate from the session's state as it is."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        if len(prompt) != 1:
            raise ApiError(
                400,
                f"prompt: {len(prompt)} prompts given; rnnserve completes one per request",
                param="prompt",
            )
        prompt = prompt[0]
    if isinstance(prompt, str):
        return TokenInput(text=prompt) if prompt else NO_INPUT
    ids = [int(i) for i in prompt]  # type: ignore[arg-type]  # a list of ids, by now
    return TokenInput(ids=ids) if ids else NO_INPUT


class StopWithholder:
    """OpenAI leaves the stop string out of the text. While the text sent so far may end
    in the beginning of a stop string, those characters are held back; once the stop
    string is complete (the generation ends there) they are dropped."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.pending = ""

    def feed(self, piece: str) -> str:
        """The text that can be sent now."""
        self.pending += piece
        held = max(
            (
                n
                for stop in self.stops
                for n in range(1, len(stop))
                if self.pending.endswith(stop[:n])
            ),
            default=0,
        )
        ready = self.pending[: len(self.pending) - held]
        self.pending = self.pending[len(ready) :]
        return ready

    def _ends_with(self, text: str) -> bool:
        return self.pending.endswith(text)

    def finish(self, piece: str, matched: str) -> str:
        """The rest of the text, the last piece included, once the generation has ended
        (at the stop string ``matched``, if any)."""
        rest, self.pending = self.pending + piece, ""
        return rest[: len(rest) - len(matched)] if matched else rest


class Completion:
    """A completion in progress: ``open`` checks everything and pulls the first event
    (so that a bad request fails before a byte of the answer is sent); ``pieces`` yields
    the text to send and, last, the finish reason."""

    def __init__(
        self,
        engine: Engine,
        model: Model,
        session: Session,
        *,
        temporary: bool,
        prompt_tokens: int,
        events: AsyncGenerator[GenerateEvent, None],
        first: GenerateEvent,
        stops: Sequence[str],
    ) -> None:
        self.engine, self.model, self.session, self.temporary = engine, model, session, temporary
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self._events, self._first = events, first
        self._closed = False
        self._withheld = StopWithholder(stops)

    @classmethod
    async def open(cls, engine: Engine, body: CompletionRequest, owner: str) -> Completion:
        unsupported = body.unsupported()
        if unsupported is not None:
            name, allowed = unsupported
            raise ApiError(400, f"{name}: rnnserve supports only {allowed}", param=name)
        model = language_model(engine.repository, body.model)
        config = engine.config
        # unset: the model's config.toml default, else OpenAI's
        max_tokens = body.max_tokens or int(
            model.config.sampling.get("max_tokens", OPENAI_MAX_TOKENS)
        )
        if max_tokens > config.max_generate_tokens:
            raise ApiError(
                400,
                f"max_tokens = {max_tokens}: this server generates at most "
                f"{config.max_generate_tokens} tokens per request (max_generate_tokens)",
                param="max_tokens",
            )
        prompt = prompt_input(body.prompt)
        ids = None
        if prompt.given:  # its text measured before it is tokenized, its ids counted
            try:
                limits = engine.core.input_limits
                ids = encode_input(model, prompt, field="prompt", limits=limits).tolist()
            except ServiceError as exc:
                raise from_service_error(exc) from None
        session = await cls._session(engine, body, model, owner)
        temporary = not body.session_id and not body.keep_session
        options = GenerateOptions(
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            seed=body.seed,
            stop=body.stops,
        )
        given = NO_INPUT if ids is None else TokenInput(ids=ids)
        events = engine.generation.generate(session, given, options)
        try:
            first = await anext(events)
        except BaseException:
            await events.aclose()
            if not body.session_id:  # made for this request, which never began
                await cls._close(engine, session)
            raise
        return cls(
            engine,
            model,
            session,
            temporary=temporary,
            prompt_tokens=len(ids or ()),
            events=events,
            first=first,
            stops=body.stops,
        )

    @staticmethod
    async def _session(
        engine: Engine, body: CompletionRequest, model: Model, owner: str
    ) -> Session:
        if not body.session_id:
            return await engine.sessions.create(model, owner=owner)
        try:
            session = await engine.sessions.lookup(body.session_id, owner)
        except NotFound as exc:
            raise from_service_error(exc, code="session_not_found") from None
        if session.model.name != model.name:
            raise ApiError(
                400,
                f"session_id: session {body.session_id} runs model "
                f"{session.model.name}/{session.model.version}, not {body.model}",
                param="session_id",
            )
        return session

    @staticmethod
    async def _close(engine: Engine, session: Session) -> None:
        with contextlib.suppress(ServiceError):
            await engine.sessions.close(session)

    async def close(self) -> None:
        """End the generation (the session keeps the tokens delivered) and close a
        temporary session; once, however often it is called (``pieces`` calls it as it
        ends, and the front after the response, for a stream that never began)."""
        if self._closed:
            return
        self._closed = True
        # Shielded: a stream the client left is cancelled by sse-starlette's anyio task
        # group, whose cancellation would otherwise strike every await here again.
        with anyio.CancelScope(shield=True):
            await self._events.aclose()
            if self.temporary:
                await self._close(self.engine, self.session)

    async def pieces(self) -> AsyncGenerator[tuple[str, str | None], None]:
        """(text, None) while it generates, then (the rest, finish reason)."""
        try:
            events = self._events
            event: GenerateEvent | None = self._first
            while event is not None:
                piece = "" if event.token is None else event.token.text
                self.completion_tokens += event.token is not None
                if event.finish_reason is not None:
                    rest = self._withheld.finish(piece, event.matched_stop)
                    yield rest, FINISH[event.finish_reason]
                    return
                text = self._withheld.feed(piece)
                if text:
                    yield text, None
                event = await anext(events, None)
        finally:
            await self.close()

    @property
    def usage(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
        }
