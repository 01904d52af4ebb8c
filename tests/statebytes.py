"""Signed session state taken apart and put together by the layout docs/api.md documents
(written from the documentation, not from the server's statecodec), so that tests can
build what an attacker holding a key could: any field set to any value, re-signed.

``Export.parse(data)`` reads format-2 bytes of either kind (an export, or a record of
the shared store); ``pieces()`` lists the payload field by field, so a test can cut the
bytes at every field boundary; ``signed(key)`` puts them together with a fresh MAC.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import struct
from dataclasses import dataclass

import numpy as np

MAGIC = b"RNNSTATE"
EXPORT, RECORD = 1, 2
MAC = 32


@dataclass
class Tensor:
    name: bytes
    dtype: int
    shape: list[int]
    data: bytes

    @property
    def values(self) -> np.ndarray:
        return np.frombuffer(self.data, dtype="<f4").reshape(self.shape).copy()

    def with_values(self, values: np.ndarray) -> Tensor:
        """The same tensor holding ``values`` (its shape follows them)."""
        values = np.asarray(values, dtype="<f4")
        return dataclasses.replace(self, shape=list(values.shape), data=values.tobytes())


@dataclass
class Export:
    """Every field of signed state bytes, as numbers and bytes (any value fits)."""

    kind: int
    model: bytes
    version: int
    steps: int
    rng_kind: int
    rng_state: int
    rng_increment: int
    has_uint32: int
    uinteger: int
    tensors: list[Tensor]
    record_head: bytes = b""  # a record's session id, owner and idle timeout, as stored
    record_tail: bytes = b""  # a record's last call
    format: int = 2
    trailing: bytes = b""
    tensor_count: int | None = None  # None: len(tensors)

    @classmethod
    def parse(cls, data: bytes) -> Export:
        assert data[:8] == MAGIC
        fmt, kind = struct.unpack_from("<HB", data, 8)
        body = data[11:-MAC]
        at = 0
        head = b""
        if kind == RECORD:
            start = at
            (n,) = struct.unpack_from("<B", body, at)
            at += 1 + n
            (n,) = struct.unpack_from("<H", body, at)
            at += 2 + n + 8
            head = body[start:at]
        (n,) = struct.unpack_from("<B", body, at)
        model = body[at + 1 : at + 1 + n]
        at += 1 + n
        version, steps, rng_kind = struct.unpack_from("<IQB", body, at)
        at += 13
        rng_state = int.from_bytes(body[at : at + 16], "little")
        rng_increment = int.from_bytes(body[at + 16 : at + 32], "little")
        has_uint32, uinteger = struct.unpack_from("<BI", body, at + 32)
        at += 37
        (count,) = struct.unpack_from("<B", body, at)
        at += 1
        tensors = []
        for _ in range(count):
            (n,) = struct.unpack_from("<B", body, at)
            name = body[at + 1 : at + 1 + n]
            at += 1 + n
            dtype, dims = struct.unpack_from("<BB", body, at)
            shape = list(struct.unpack_from(f"<{dims}I", body, at + 2))
            at += 2 + 4 * dims
            size = 4 * int(np.prod(shape))
            tensors.append(Tensor(name, dtype, shape, body[at : at + size]))
            at += size
        tail = body[at:] if kind == RECORD else b""
        trailing = b"" if kind == RECORD else body[at:]
        return cls(
            kind, model, version, steps, rng_kind, rng_state, rng_increment, has_uint32,
            uinteger, tensors, head, tail, fmt, trailing,
        )  # fmt: skip

    def pieces(self) -> list[tuple[str, bytes]]:
        """The payload, field by field, in order."""
        out = [("prefix", MAGIC + struct.pack("<HB", self.format, self.kind))]
        if self.record_head:
            out.append(("record head", self.record_head))
        out += [
            ("model length", struct.pack("<B", len(self.model))),
            ("model", self.model),
            ("version", struct.pack("<I", self.version)),
            ("steps", struct.pack("<Q", self.steps)),
            ("rng kind", struct.pack("<B", self.rng_kind)),
            ("rng state", self.rng_state.to_bytes(16, "little")),
            ("rng increment", self.rng_increment.to_bytes(16, "little")),
            ("has_uint32", struct.pack("<B", self.has_uint32)),
            ("uinteger", struct.pack("<I", self.uinteger)),
            (
                "tensor count",
                struct.pack(
                    "<B", len(self.tensors) if self.tensor_count is None else self.tensor_count
                ),
            ),
        ]
        for i, t in enumerate(self.tensors):
            out += [
                (f"tensor {i} name length", struct.pack("<B", len(t.name))),
                (f"tensor {i} name", t.name),
                (f"tensor {i} dtype", struct.pack("<B", t.dtype)),
                (f"tensor {i} dimensions", struct.pack("<B", len(t.shape))),
                (f"tensor {i} shape", struct.pack(f"<{len(t.shape)}I", *t.shape)),
                (f"tensor {i} values", t.data),
            ]
        if self.record_tail:
            out.append(("record tail", self.record_tail))
        if self.trailing:
            out.append(("trailing", self.trailing))
        return [(name, piece) for name, piece in out if piece]

    def body(self) -> bytes:
        return b"".join(piece for _, piece in self.pieces())

    def signed(self, key: str) -> bytes:
        return sign(self.body(), key)

    def replace(self, **changes: object) -> Export:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def retyped(self, **changes: object) -> Export:
        """The export with fields of its one tensor changed (name, dtype, shape, data)."""
        (h,) = self.tensors
        return self.replace(tensors=[dataclasses.replace(h, **changes)])  # type: ignore[arg-type]

    def with_values(self, changes: dict[tuple[int, ...], float]) -> Export:
        """The export with values of its one tensor changed: position -> value."""
        (h,) = self.tensors
        values = h.values
        for at, value in changes.items():
            values[at] = value
        return self.replace(tensors=[h.with_values(values)])


def sign(body: bytes, key: str) -> bytes:
    return body + hmac.new(key.encode(), body, hashlib.sha256).digest()


def format_1(model: str, version: int, steps: int, state: np.ndarray, header: bytes = b"") -> bytes:
    """Bytes of the old format 1 (JSON header, SHA-256 checksum, no MAC), as an earlier
    rnnserve exported them; ``header`` replaces the JSON header."""
    rng = np.random.Generator(np.random.PCG64(1)).bit_generator.state
    if not header:
        header = json.dumps(
            {"format": 1, "model": model, "version": version, "layers": state.shape[0],
             "hidden_size": state.shape[1], "steps": steps, "rng": rng},
            separators=(",", ":"),
        ).encode()  # fmt: skip
    body = MAGIC + struct.pack("<I", len(header)) + header + state.astype("<f4").tobytes()
    return body + hashlib.sha256(body).digest()
