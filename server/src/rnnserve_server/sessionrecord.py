"""A session's record in the shared store as signed bytes, checked on load like an import.

Replicas that share a store share the state keys, so a record carries the same MAC as
an export (statecodec.py, kind 2) and everything a replica reads of the session is
inside it: a record that no replica wrote, or one copied from another session or
another caller, is refused before any field is read, and every field is checked after.
Payload, after the format's prefix (integers little-endian)::

    session id      u8 length, ASCII: the id the record is stored under
    owner           u16 length, UTF-8: the caller the session belongs to
    idle timeout    u64 milliseconds (1 .. MAX_IDLE_MS)
    snapshot        as an export's: model, version, steps, generator, tensors
    last call       u16 length and UTF-8 request id (empty: none); u8 reply (0 or 1),
                    and with 1: i64 base step (-1 .. MAX_STEPS), u8 finish reason
                    (0 none, then FINISH_REASONS in order), u8 generator (0 or 1) and
                    the generator, u32 token count n, n x (u32 token id, f64 probability);
                    u8 output (0 or 1), and with 1: u32 count n (the model's K + R),
                    n x f32: the output row of a Step on a model without a head graph
                    (which a retry answers with: it cannot be computed from the state)

Redis keeps three plain fields beside it for its Lua scripts (owner, idle_ms, rev).
"""

from __future__ import annotations

import contextlib
import math
import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from rnnserve_server.errors import DataLoss
from rnnserve_server.repository import Model
from rnnserve_server.runtime import FloatArray
from rnnserve_server.statecodec import (
    KIND_RECORD,
    MAX_STEPS,
    Reader,
    RngState,
    Snapshot,
    StateCodec,
    StateError,
    Writer,
)

FINISH_REASONS = ("length", "end_token", "stop_string", "stop_token")
MAX_IDLE_MS = 2**53
_SESSION_ID = re.compile(r"[0-9a-f]{32}")
_ANY_TEXT = re.compile(r".*", re.DOTALL)
_TOKEN = struct.Struct("<Id")


@dataclass(frozen=True)
class RecordContent:
    """What a record holds besides the session's id and owner."""

    idle_timeout_s: float
    steps: int
    rng: RngState
    state: FloatArray
    last_request: str = ""
    last_reply: dict[str, Any] | None = None  # a Generate's reply (engine.generate)
    last_output: FloatArray | None = None  # a Step's output row (a model without a head)


def seal_record(
    codec: StateCodec, session_id: str, owner: str, model: Model, content: RecordContent
) -> bytes:
    manifest = model.package.manifest
    out = Writer()
    out.text(session_id)
    out.text(owner, "H")
    out.pack("Q", round(content.idle_timeout_s * 1000))
    snapshot = Snapshot(manifest.name, manifest.version, content.steps, content.rng, content.state)
    codec.write_snapshot(out, snapshot, manifest)
    out.text(content.last_request, "H")
    reply = content.last_reply
    out.pack("B", reply is not None)
    if reply is not None:
        finish = reply["finish"]
        out.pack("qB", reply["base"], 0 if finish is None else FINISH_REASONS.index(finish) + 1)
        rng = reply["rng"]
        out.pack("B", rng is not None)
        if rng is not None:
            out.rng(RngState.from_numpy(rng))
        tokens = reply["tokens"]
        out.pack("I", len(tokens))
        for token, probability in tokens:
            out.out += _TOKEN.pack(token, probability)
    output = content.last_output
    out.pack("B", output is not None)
    if output is not None:
        out.pack("I", len(output))
        out.out += np.ascontiguousarray(output, dtype="<f4").tobytes()
    return codec.seal(KIND_RECORD, out.out)


def open_record(
    codec: StateCodec,
    data: bytes,
    *,
    session_id: str,
    owner: str,
    model_for: Callable[[str, int], Model],
) -> tuple[Model, RecordContent]:
    """The model (``model_for`` the record's name and version) and the content of a
    record stored under ``session_id`` for ``owner``; DATA_LOSS if it fails a check."""
    with _checked(session_id):
        reader = codec.open(data, KIND_RECORD)
        idle_ms = _read_identity(reader, session_id, owner)
        name, version, steps, rng = codec.read_header(reader)
        model = model_for(name, version)
        state = codec.read_state(reader, model.package.manifest)
        request = reader.text("record.last_request", _ANY_TEXT, "H")
        tokenizer = model.package.tokenizer  # a vectors model generates nothing
        reply = _read_reply(reader, 0 if tokenizer is None else tokenizer.size)
        output = _read_output(reader, model.runtime.output_size + model.runtime.values_size)
        reader.end("record")
    return model, RecordContent(idle_ms / 1000, steps, rng, state, request, reply, output)


def record_steps(codec: StateCodec, data: bytes, *, session_id: str, owner: str) -> int:
    """The step count of a record, read as far as that (signature, identity, header):
    what closing a session needs, whether or not this replica has its model."""
    with _checked(session_id):
        reader = codec.open(data, KIND_RECORD)
        _read_identity(reader, session_id, owner)
        return codec.read_header(reader)[2]


@contextlib.contextmanager
def _checked(session_id: str) -> Iterator[None]:
    """A record's failed check as DATA_LOSS."""
    try:
        yield
    except StateError as exc:
        raise DataLoss(
            f"session {session_id}: its record in the shared store fails its check ({exc}); "
            "every replica that shares the store must have the same state_keys"
        ) from None


def _read_identity(reader: Reader, session_id: str, owner: str) -> int:
    """Check that the record is this session's, of this owner; its idle timeout in ms."""
    stored_id = reader.text("record.session_id", _SESSION_ID)
    stored_owner = reader.text("record.owner", _ANY_TEXT, "H")
    if (stored_id, stored_owner) != (session_id, owner):
        raise StateError("record: written for another session or caller")
    return reader.integer("Q", "record.idle_timeout_ms", 1, MAX_IDLE_MS)


def _read_output(reader: Reader, size: int) -> FloatArray | None:
    if not reader.integer("B", "record.output", 0, 1):
        return None
    reader.integer("I", "record.output.count", size, size)
    raw = reader.take(4 * size, "record.output values")
    output = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if not np.isfinite(output).all():
        at = int(np.argmin(np.isfinite(output)))
        raise StateError(f"record.output[{at}] = {float(output[at])}: not finite")
    return output


def _read_reply(reader: Reader, vocabulary: int) -> dict[str, Any] | None:
    if not reader.integer("B", "record.reply", 0, 1):
        return None
    base = reader.integer("q", "record.reply.base", -1, MAX_STEPS)
    finish = reader.integer("B", "record.reply.finish", 0, len(FINISH_REASONS))
    rng = reader.rng("record.reply.rng") if reader.integer("B", "record.reply.rng", 0, 1) else None
    count = reader.number("I", "record.reply.tokens")
    raw = reader.take(count * _TOKEN.size, "record.reply.tokens")
    tokens: list[tuple[int, float]] = []
    for i, (token, probability) in enumerate(_TOKEN.iter_unpack(raw)):
        if token >= vocabulary:
            raise StateError(f"record.reply.tokens[{i}] = {token}; allowed: 0 .. {vocabulary - 1}")
        if not (math.isfinite(probability) and 0.0 <= probability <= 1.0):
            raise StateError(
                f"record.reply.tokens[{i}].probability = {probability}; allowed: 0 .. 1"
            )
        tokens.append((token, probability))
    return {
        "base": base,
        "tokens": tokens,
        "finish": FINISH_REASONS[finish - 1] if finish else None,
        "rng": rng.as_numpy() if rng is not None else None,
    }
