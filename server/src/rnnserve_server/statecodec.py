"""Exported session state: self-describing bytes that any server process can import.

Layout (all integers little-endian)::

    b"RNNSTATE"            8 bytes, the magic
    header length          4 bytes, unsigned
    header                 UTF-8 JSON: format, model, version, layers, hidden_size,
                           steps, rng (the PCG64 generator's state)
    state                  layers * hidden_size float32 values, layer-major
    checksum               32 bytes, SHA-256 of everything before it

The checksum detects corruption, not forgery: a caller can always craft a state for a
model it may use, which is no more than feeding it tokens. Anything that does not
parse or does not fit the model is refused with INVALID_ARGUMENT naming the reason.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from rnnserve_server.errors import InvalidArgument
from rnnserve_server.runtime import FloatArray

MAGIC = b"RNNSTATE"
FORMAT = 1
_DIGEST = 32
_MAX_HEADER = 64 * 1024


@dataclass(frozen=True)
class SessionState:
    model: str
    version: int
    steps: int
    rng: dict[str, Any]
    state: FloatArray  # [L, H]


def encode(snapshot: SessionState) -> bytes:
    layers, hidden = snapshot.state.shape
    header = json.dumps(
        {
            "format": FORMAT,
            "model": snapshot.model,
            "version": snapshot.version,
            "layers": layers,
            "hidden_size": hidden,
            "steps": snapshot.steps,
            "rng": snapshot.rng,
        },
        separators=(",", ":"),
    ).encode()
    body = (
        MAGIC
        + struct.pack("<I", len(header))
        + header
        + np.ascontiguousarray(snapshot.state, dtype="<f4").tobytes()
    )
    return body + hashlib.sha256(body).digest()


def decode(data: bytes, *, model: str, version: int, layers: int, hidden: int) -> SessionState:
    """Parse and check exported bytes against the model they are imported into."""
    if len(data) < len(MAGIC) + 4 + _DIGEST or not data.startswith(MAGIC):
        raise InvalidArgument("state: not an rnnserve session state (bad magic or too short)")
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if hashlib.sha256(body).digest() != digest:
        raise InvalidArgument("state: checksum mismatch; the bytes are corrupted or truncated")
    (header_length,) = struct.unpack_from("<I", body, len(MAGIC))
    start = len(MAGIC) + 4
    if header_length > _MAX_HEADER or start + header_length > len(body):
        raise InvalidArgument("state: header length out of range")
    try:
        header = json.loads(body[start : start + header_length])
        fields = (
            header["format"],
            header["model"],
            header["version"],
            header["layers"],
            header["hidden_size"],
            header["steps"],
            header["rng"],
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(f"state: unreadable header ({exc})") from None
    fmt, name, ver, got_layers, got_hidden, steps, rng = fields
    if fmt != FORMAT:
        raise InvalidArgument(f"state: format {fmt!r} is not supported (this server: {FORMAT})")
    if (name, ver) != (model, version):
        raise InvalidArgument(
            f"state: exported from model {name}/{ver}, cannot import into {model}/{version}"
        )
    if (got_layers, got_hidden) != (layers, hidden):
        raise InvalidArgument(
            f"state: shape [{got_layers}, {got_hidden}] does not match the model's "
            f"[{layers}, {hidden}]"
        )
    payload = body[start + header_length :]
    if len(payload) != layers * hidden * 4:
        raise InvalidArgument(
            f"state: {len(payload)} bytes of state, expected {layers * hidden * 4}"
        )
    if not isinstance(steps, int) or steps < 0 or not isinstance(rng, dict):
        raise InvalidArgument("state: steps or rng field malformed")
    state = np.frombuffer(payload, dtype="<f4").reshape(layers, hidden).astype(np.float32)
    if not np.isfinite(state).all():
        raise InvalidArgument("state: holds non-finite values")
    return SessionState(model=name, version=ver, steps=steps, rng=rng, state=state)


def peek_version(data: bytes) -> int | None:
    """The model version exported bytes name; None if they are unreadable or corrupted
    (checked first, so a damaged version field is reported by ``decode`` as corruption)."""
    body, digest = data[:-_DIGEST], data[-_DIGEST:]
    if len(data) <= _DIGEST or hashlib.sha256(body).digest() != digest:
        return None
    try:
        (length,) = struct.unpack_from("<I", data, len(MAGIC))
        start = len(MAGIC) + 4
        version = json.loads(data[start : start + min(length, _MAX_HEADER)])["version"]
    except (struct.error, ValueError, KeyError, TypeError):
        return None
    return version if isinstance(version, int) and version > 0 else None


def rng_from_state(state: dict[str, Any]) -> np.random.Generator:
    """A PCG64 generator continuing from an exported generator state."""
    generator = np.random.Generator(np.random.PCG64())
    try:
        generator.bit_generator.state = state
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidArgument(f"state: rng field malformed ({exc})") from None
    return generator
