"""Session state as signed bytes: exports (format 2) and the shared store's records.

Layout, integers little-endian (docs/api.md, "Exported state")::

    magic            8 bytes   b"RNNSTATE"
    format           u16       2
    kind             u8        1: an export; 2: a shared-store session record (records.py)
    payload                    the kind's fields; an export's is one snapshot:
      model          u8 length n (1..128), n ASCII bytes: the model's name
      version        u32       1 .. 2^31-1
      steps          u64       0 .. MAX_STEPS
      rng            u8 bit generator (1: PCG64), u128 state, u128 increment (odd),
                     u8 has_uint32 (0 or 1), u32 uinteger
      tensors        u8 count, then each: u8 length and ASCII name, u8 dtype
                     (1: float32), u8 dimension count d (1..4), d x u32 sizes, the values:
                     one tensor [rows, width] per part of the model's manifest.state, in
                     order (h; an LSTM's h then c; a custom model's own parts)
    mac              32 bytes  HMAC-SHA256 of everything before it, under a state key

The MAC is checked before any field is read, so bytes that no holder of a key made are
refused whole. Every field is then checked anyway (a leaked key must not crash or
mislead the server): type and range, the tensors' names, dtype and shape exactly as the
model's, their values finite and within their part's bound (``modelpackage.
state_violation``: the one check of every state the server takes in). Each
refusal names the field. Nothing in the payload is nested; strings are length-prefixed;
tensor sizes are compared with the model's before any value is read.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from rnnserve_server.config import ServerConfig
from rnnserve_server.errors import InvalidArgument
from rnnserve_server.manifest import NAME_PATTERN, STATE_PART_NAME, Manifest
from rnnserve_server.modelpackage import state_violation
from rnnserve_server.runtime import FloatArray
from rnnserve_server.statekeys import MAC_BYTES, StateKeys

MAGIC = b"RNNSTATE"
FORMAT = 2
KIND_EXPORT, KIND_RECORD = 1, 2
_PREFIX = struct.Struct("<8sHB")  # magic, format, kind

# The most tokens a session may consume: what the format's u64, the proto's uint64 and
# a signed 64-bit integer (Redis, most clients) all hold. A call that could pass it is
# refused; no session reaches it in practice (2^63 steps is 292 years at 10^9 per second).
MAX_STEPS = 2**63 - 1

PCG64 = 1
MAX_DIMENSIONS = 4
FLOAT32 = 1


class StateError(ValueError):
    """Bytes that are not a valid state for the model; the message names the field."""


def _out_of_range(field: str, value: Any, allowed: str) -> StateError:
    return StateError(f"{field} = {value!r} is out of range; allowed: {allowed}")


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a session's state: a part of the manifest's state, its
    rows of the pool's [S, W] array."""

    name: str
    shape: tuple[int, int]


def state_layout(manifest: Manifest) -> tuple[TensorSpec, ...]:
    """The tensors a session of this model holds: one [rows, width] per state part."""
    width = manifest.state_layout.width
    return tuple(TensorSpec(p.name, (p.rows, width)) for p in manifest.state_layout.parts)


@dataclass(frozen=True)
class RngState:
    """A PCG64 generator's state, every field typed and in range."""

    state: int
    increment: int
    has_uint32: int
    uinteger: int

    @classmethod
    def of(cls, generator: np.random.Generator) -> RngState:
        return cls.from_numpy(generator.bit_generator.state)

    @classmethod
    def from_numpy(cls, numpy_state: Mapping[str, Any]) -> RngState:
        """From numpy's form (``bit_generator.state``) of a generator this server made."""
        if numpy_state["bit_generator"] != "PCG64":  # sessions only ever make PCG64
            raise AssertionError(f"a {numpy_state['bit_generator']} generator")
        return cls(
            state=int(numpy_state["state"]["state"]),
            increment=int(numpy_state["state"]["inc"]),
            has_uint32=int(numpy_state["has_uint32"]),
            uinteger=int(numpy_state["uinteger"]),
        )

    def as_numpy(self) -> dict[str, Any]:
        """numpy's form (``bit_generator.state``)."""
        return {
            "bit_generator": "PCG64",
            "state": {"state": self.state, "inc": self.increment},
            "has_uint32": self.has_uint32,
            "uinteger": self.uinteger,
        }

    def generator(self) -> np.random.Generator:
        generator = np.random.Generator(np.random.PCG64())
        generator.bit_generator.state = self.as_numpy()
        return generator


@dataclass(frozen=True)
class Snapshot:
    """What an export carries: the model it belongs to, the step count, the sampling
    generator and the state (the pool's array, [S, W]: every part's rows)."""

    model: str
    version: int
    steps: int
    rng: RngState
    state: FloatArray


class Writer:
    """Builds a payload field by field."""

    def __init__(self) -> None:
        self.out = bytearray()

    def pack(self, fmt: str, *values: Any) -> None:
        self.out += struct.pack("<" + fmt, *values)

    def text(self, value: str, length_format: str = "B") -> None:
        encoded = value.encode()
        self.pack(length_format, len(encoded))
        self.out += encoded

    def rng(self, rng: RngState) -> None:
        self.pack("B", PCG64)
        self.out += rng.state.to_bytes(16, "little") + rng.increment.to_bytes(16, "little")
        self.pack("BI", rng.has_uint32, rng.uinteger)


class Reader:
    """Reads a payload field by field; StateError naming the field where bytes run out."""

    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.at = 0

    def take(self, size: int, field: str) -> memoryview:
        if size > len(self.data) - self.at:
            raise StateError(f"{field}: the bytes end inside this field (truncated)")
        piece = self.data[self.at : self.at + size]
        self.at += size
        return piece

    def unpack(self, fmt: str, field: str) -> tuple[int, ...]:
        layout = struct.Struct("<" + fmt)
        return layout.unpack(self.take(layout.size, field))

    def number(self, fmt: str, field: str) -> int:
        """One unsigned or signed integer of the struct format ``fmt``."""
        (value,) = self.unpack(fmt, field)
        return value

    def integer(self, fmt: str, field: str, low: int, high: int) -> int:
        value = self.number(fmt, field)
        if not low <= value <= high:
            raise _out_of_range(field, value, f"{low} .. {high}")
        return value

    def text(self, field: str, pattern: re.Pattern[str], length_format: str = "B") -> str:
        raw = self.take(self.number(length_format, field + " length"), field)
        try:
            value = bytes(raw).decode("utf-8")
        except UnicodeDecodeError:
            raise StateError(f"{field}: not UTF-8") from None
        if not pattern.fullmatch(value):
            raise StateError(f"{field} = {value[:40]!r}: must match {pattern.pattern}")
        return value

    def rng(self, field: str) -> RngState:
        kind = self.number("B", field + ".bit_generator")
        if kind != PCG64:
            raise _out_of_range(field + ".bit_generator", kind, f"{PCG64} (PCG64)")
        state = int.from_bytes(self.take(16, field + ".state"), "little")
        increment = int.from_bytes(self.take(16, field + ".increment"), "little")
        if increment % 2 == 0:
            raise StateError(f"{field}.increment = {increment}: must be odd (PCG64)")
        has_uint32 = self.integer("B", field + ".has_uint32", 0, 1)
        return RngState(state, increment, has_uint32, self.number("I", field + ".uinteger"))

    def end(self, field: str) -> None:
        left = len(self.data) - self.at
        if left:
            raise StateError(f"{field}: {left} bytes after the last field")


class StateCodec:
    """Signs and checks session state with the deployment's keys (one per server)."""

    def __init__(self, keys: StateKeys, *, max_unbounded_state: float) -> None:
        self.keys = keys
        self.max_unbounded_state = max_unbounded_state

    @classmethod
    def from_config(cls, config: ServerConfig) -> StateCodec:
        return cls(StateKeys.from_config(config), max_unbounded_state=config.max_unbounded_state)

    # ------------------------------------------------------------------ the envelope

    def seal(self, kind: int, payload: bytes | bytearray) -> bytes:
        body = _PREFIX.pack(MAGIC, FORMAT, kind) + payload
        return body + self.keys.sign(body)

    def open(self, data: bytes, kind: int) -> Reader:
        """The payload of signed bytes of this kind, its MAC checked before anything in
        it is read."""
        if len(data) < _PREFIX.size + MAC_BYTES or not data.startswith(MAGIC):
            raise StateError("state: not an rnnserve session state (bad magic or too short)")
        _, fmt, found = _PREFIX.unpack_from(data)
        if fmt != FORMAT:
            if data[12:22] == b'{"format":':
                raise StateError(
                    "state: format 1 (exported by an earlier rnnserve; checksummed, not "
                    f"signed) is no longer imported; this server reads format {FORMAT}: "
                    "export the session again from a current server"
                )
            raise _out_of_range("state.format", fmt, f"{FORMAT}")
        view = memoryview(data)
        if not self.keys.verify(view[:-MAC_BYTES], view[-MAC_BYTES:]):
            raise StateError(
                "state: the signature does not verify: the bytes were changed, or they were "
                "signed by a server with other state keys (state_keys)"
            )
        if found != kind:
            raise _out_of_range("state.kind", found, f"{kind} ({_KIND_NAMES[kind]})")
        return Reader(view[_PREFIX.size : -MAC_BYTES])

    # ------------------------------------------------------------------ snapshots

    def write_snapshot(self, out: Writer, snapshot: Snapshot, manifest: Manifest) -> None:
        out.text(snapshot.model)
        out.pack("IQ", snapshot.version, snapshot.steps)
        out.rng(snapshot.rng)
        layout = state_layout(manifest)
        out.pack("B", len(layout))
        start = 0
        for spec in layout:
            rows = spec.shape[0]
            out.text(spec.name)
            out.pack(f"BB{len(spec.shape)}I", FLOAT32, len(spec.shape), *spec.shape)
            values = snapshot.state[start : start + rows]
            out.out += np.ascontiguousarray(values, dtype="<f4").tobytes()
            start += rows

    @staticmethod
    def read_header(reader: Reader) -> tuple[str, int, int, RngState]:
        """The snapshot's model name and version, step count and generator: each
        typed and in range, whatever the model."""
        name = reader.text("state.model", NAME_PATTERN)
        version = reader.integer("I", "state.version", 1, 2**31 - 1)
        steps = reader.integer("Q", "state.steps", 0, MAX_STEPS)
        return name, version, steps, reader.rng("state.rng")

    def read_state(self, reader: Reader, manifest: Manifest) -> FloatArray:
        """The snapshot's tensors, exactly as the model's layout has them, as the pool's
        [S, W] array; every value finite and within its part's bound."""
        layout = state_layout(manifest)
        count = reader.number("B", "state.tensors")
        if count != len(layout):
            names = ", ".join(spec.name for spec in layout)
            raise StateError(
                f"state.tensors = {count}: the model's state is {len(layout)} tensor(s) ({names})"
            )
        tensors = [
            self._tensor(reader, spec, f"state.tensors[{i}]") for i, spec in enumerate(layout)
        ]
        state = tensors[0] if len(tensors) == 1 else np.concatenate(tensors)
        violation = state_violation(manifest, state, self.max_unbounded_state)
        if violation is not None:
            raise StateError(violation.describe("state"))
        return state

    @staticmethod
    def _tensor(reader: Reader, spec: TensorSpec, field: str) -> FloatArray:
        name = reader.text(field + ".name", STATE_PART_NAME)
        if name != spec.name:
            raise StateError(f"{field}.name = {name!r}; the model's state holds {spec.name!r}")
        dtype = reader.number("B", f"state.{name}.dtype")
        if dtype != FLOAT32:
            raise _out_of_range(f"state.{name}.dtype", dtype, f"{FLOAT32} (float32)")
        count = reader.integer("B", f"state.{name}.dimensions", 1, MAX_DIMENSIONS)
        shape = reader.unpack(f"{count}I", f"state.{name}.shape")
        if shape != spec.shape:
            raise StateError(
                f"state.{name}: shape {list(shape)} does not match the model's {list(spec.shape)}"
            )
        raw = reader.take(4 * int(np.prod(shape)), f"state.{name} values")
        return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)

    # ------------------------------------------------------------------ exports

    def export(
        self, manifest: Manifest, *, steps: int, rng: np.random.Generator, state: FloatArray
    ) -> bytes:
        out = Writer()
        snapshot = Snapshot(manifest.name, manifest.version, steps, RngState.of(rng), state)
        self.write_snapshot(out, snapshot, manifest)
        return self.seal(KIND_EXPORT, out.out)

    def import_state(self, data: bytes, manifest: Manifest) -> Snapshot:
        """Check exported bytes against the model they are imported into; INVALID_ARGUMENT
        naming the field otherwise."""
        try:
            reader = self.open(data, KIND_EXPORT)
            name, version, steps, rng = self.read_header(reader)
            if (name, version) != (manifest.name, manifest.version):
                raise StateError(
                    f"state: exported from model {name}/{version}, cannot import into "
                    f"{manifest.name}/{manifest.version}"
                )
            state = self.read_state(reader, manifest)
            reader.end("state")
        except StateError as exc:
            raise InvalidArgument(str(exc)) from None
        return Snapshot(name, version, steps, rng, state)

    def peek_version(self, data: bytes) -> int | None:
        """The model version signed exported bytes name; None where they are not that
        (``import_state`` then says why)."""
        try:
            reader = self.open(data, KIND_EXPORT)
            reader.text("state.model", NAME_PATTERN)
            return reader.integer("I", "state.version", 1, 2**31 - 1)
        except StateError:
            return None


_KIND_NAMES = {KIND_EXPORT: "an export", KIND_RECORD: "a session record"}
