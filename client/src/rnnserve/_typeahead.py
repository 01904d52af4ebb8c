"""`rnnserve interactive`: the most likely next characters, shown as you type.

Every keypress is one request on a single StepStream kept open for the whole run, applied to
one session. A session's state cannot be rewound, so Backspace opens a fresh session and feeds
it the remaining text in one step; the same recovers a session the server expired while the
user was idle.
"""

from __future__ import annotations

import codecs
import os
import queue
import shutil
import signal
import sys
from collections.abc import Generator, Iterator
from contextlib import contextmanager
from typing import TextIO

import grpc

from rnnserve.client import Client
from rnnserve.errors import InvalidArgument, NotFound, RnnServeError
from rnnserve.session import Session
from rnnserve.types import ModelInfo, StepInput, StepResult, TokenProb

_CTRL_D = "\x04"
_BACKSPACES = ("\x7f", "\x08")
_ESCAPE = "\x1b"
_SHOWN = {" ": "␣", "\n": "⏎", "\t": "⇥"}
_NOTHING_TYPED = "(start typing)"


class _Lockstep:
    """One open StepStream used call-and-response: `send` waits for its own result.

    After a failed request the server ends the stream; the next `send` opens a new one.
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self._requests: queue.Queue[StepInput | None] | None = None
        self._results: Generator[StepResult, None, None] | None = None

    def send(self, step: StepInput) -> StepResult:
        if self._requests is None or self._results is None:
            self._requests = queue.Queue()
            self._results = self._client.step_stream(iter(self._requests.get, None))
        self._requests.put(step)
        try:
            result = next(self._results, None)
        except RnnServeError:
            self.close()
            raise
        if result is None:
            self.close()
            raise RnnServeError(grpc.StatusCode.UNKNOWN, "the server ended the step stream early")
        return result

    def close(self) -> None:
        if self._requests is not None:
            self._requests.put(None)
        if self._results is not None:
            self._results.close()
        self._requests = self._results = None


class TypeAhead:
    """The typed text, its session and the stream that feeds it."""

    def __init__(self, client: Client, model: ModelInfo, top_k: int) -> None:
        self._client = client
        self._model = model
        self._top_k = top_k
        self._stream = _Lockstep(client)
        self._session = self._open_session()
        self.text = ""

    def _open_session(self) -> Session:
        return self._client.create_session(self._model.name, self._model.version)

    def _send(self, text: str) -> StepResult:
        return self._stream.send(StepInput(self._session.id, text=text, top_k=self._top_k))

    def _restart(self) -> None:
        self._session.close()
        self._session = self._open_session()

    def type(self, chars: str) -> StepResult:
        """Feed `chars` after the text; on `InvalidArgument` the text stays as it was."""
        try:
            result = self._send(chars)
        except NotFound:
            self._restart()
            result = self._send(self.text + chars)
        self.text += chars
        return result

    def delete_last(self) -> StepResult | None:
        """Drop the last character; None when no text is left to predict from."""
        self.text = self.text[:-1]
        self._restart()
        return self._send(self.text) if self.text else None

    def close(self) -> None:
        self._stream.close()
        self._session.close()


def check_model(model: ModelInfo) -> None:
    """Type-ahead needs one token per character, a next-token output and a session that
    starts from nothing (no source to encode, no condition to choose)."""
    kind = model.vocabulary.kind if model.vocabulary is not None else "no"
    if kind != "char" or model.output != "vocabulary":
        raise ValueError(
            f"interactive needs a character-level language model; {model.name} has {kind} "
            f"vocabulary and a {model.output} output"
        )
    if model.initial_state in ("encoder", "condition"):
        needs = "a source to encode" if model.initial_state == "encoder" else "a condition"
        raise ValueError(
            f"interactive needs a language model whose sessions start from nothing; "
            f"{model.name} needs {needs} (initial state {model.initial_state!r})"
        )


def run_lines(typeahead: TypeAhead, lines: TextIO, out: TextIO) -> int:
    """Pipe mode: one output line per input character, `<char>\\t<cand>:<p> ...` in repr.

    A character the model rejects gets `<char>\\terror: <CODE>: <details>` and is skipped;
    the exit status is then 1.
    """
    status = 0
    for line in lines:
        for char in line:
            try:
                result = typeahead.type(char)
            except InvalidArgument as error:
                out.write(f"{char!r}\terror: {error}\n")
                status = 1
            else:
                out.write(f"{char!r}\t{_scriptable(result.top)}\n")
            out.flush()
    return status


def run_terminal(typeahead: TypeAhead, fd: int, out: TextIO, title: str) -> int:
    """TTY mode: keys are read unbuffered, the status line is redrawn after each."""
    status_line = _NOTHING_TYPED
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    with _cbreak(fd):
        out.write(f"{title}: type; Backspace deletes, Ctrl-D quits\n")
        while True:
            _redraw(out, typeahead.text, status_line)
            chunk = os.read(fd, 64)
            if not chunk:
                break
            keys = decoder.decode(chunk)
            if keys.startswith(_ESCAPE):  # arrow and function keys: not text
                continue
            if _CTRL_D in keys:
                break
            for key in keys:
                status_line = _apply_key(typeahead, key, status_line)
    out.write("\n")
    return 0


def _apply_key(typeahead: TypeAhead, key: str, status_line: str) -> str:
    if key in _BACKSPACES:
        if not typeahead.text:
            return status_line
        result = typeahead.delete_last()
        return _NOTHING_TYPED if result is None else _readable(result.top)
    if not key.isprintable() and key not in _SHOWN:
        return status_line
    try:
        result = typeahead.type(key)
    except InvalidArgument as error:
        return f"{_show(key)} rejected: {error.details}"
    return _readable(result.top)


def _redraw(out: TextIO, text: str, status_line: str) -> None:
    width = shutil.get_terminal_size().columns - 1  # the last column would wrap the line
    shown = "".join(_SHOWN.get(char, char) for char in text)
    room = max(width - len(status_line) - 3, 0)
    line = f"{shown[-room:] if room else ''} │ {status_line}"[:width]
    out.write(f"\r\x1b[K{line}")
    out.flush()


def _show(char: str) -> str:
    return _SHOWN.get(char, char)


def _scriptable(top: list[TokenProb]) -> str:
    """`'b':0.5000 'c':0.2500`: Python literals, so spaces and newlines stay visible."""
    return " ".join(f"{t.text!r}:{t.probability:.4f}" for t in top)


def _readable(top: list[TokenProb]) -> str:
    """`b 50%  c 25%` for the status line."""
    return "  ".join(f"{_show(t.text)} {t.probability:.0%}" for t in top)


@contextmanager
def _cbreak(fd: int) -> Iterator[None]:
    """Unbuffered keys without echo; the terminal is restored however the block ends."""
    import termios  # POSIX only: imported here so pipe mode also runs on Windows
    import tty

    saved = termios.tcgetattr(fd)

    def leave(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    handlers = {sig: signal.signal(sig, leave) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def stdin_is_terminal() -> bool:
    """Whether `interactive` should read keys (a POSIX terminal) or lines (anything else)."""
    return os.name == "posix" and sys.stdin.isatty() and sys.stdout.isatty()
