"""The KServe v2 tensor wire format: request tensors decoded and checked, response
tensors encoded.

A request tensor's data travels either in its typed ``contents`` or, as tritonclient
sends it, in ``raw_input_contents`` (one entry per input, in order): little-endian
elements, BYTES as a 4-byte little-endian length before each element. Responses use
``raw_output_contents``, as Triton's own server does.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from rnnserve_server.errors import InvalidArgument, shown
from rnnserve_server.kserve.pb import grpc_service_pb2 as pb

_LENGTH = struct.Struct("<I")


def element_count(name: str, shape: Sequence[int]) -> int:
    if any(d < 0 for d in shape):
        raise InvalidArgument(
            f"inference input '{name}' has a negative dimension in its shape {list(shape)}"
        )
    return math.prod(shape)


def int64s(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> list[int]:
    """The elements of an INT64 tensor (its datatype and shape checked by the caller)."""
    count = element_count(tensor.name, tensor.shape)
    if raw is None:
        values = list(tensor.contents.int64_contents)
        if len(values) != count:
            raise InvalidArgument(
                f"unexpected number of elements {len(values)} in the contents of inference "
                f"input '{tensor.name}', expecting {count} for its shape {list(tensor.shape)}"
            )
        return values
    if len(raw) != count * 8:
        raise InvalidArgument(
            f"input byte size mismatch for input '{tensor.name}': expected {count * 8} "
            f"bytes for {count} INT64 elements, got {len(raw)}"
        )
    return np.frombuffer(raw, dtype="<i8").tolist()  # type: ignore[no-any-return]


def byte_strings(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> list[bytes]:
    """The elements of a BYTES tensor (its datatype and shape checked by the caller)."""
    count = element_count(tensor.name, tensor.shape)
    if raw is None:
        values = list(tensor.contents.bytes_contents)
    else:
        values = []
        at = 0
        while at < len(raw) and len(values) <= count:  # one more than the shape says: refused
            if at + 4 > len(raw):
                raise InvalidArgument(
                    f"inference input '{tensor.name}': {len(raw) - at} bytes left where a "
                    "4-byte element length was expected (BYTES elements are a 4-byte "
                    "little-endian length, then that many bytes)"
                )
            (length,) = _LENGTH.unpack_from(raw, at)
            at += 4
            if at + length > len(raw):
                raise InvalidArgument(
                    f"inference input '{tensor.name}': an element of {length} bytes runs past "
                    f"the end of the data ({len(raw) - at} bytes left)"
                )
            values.append(raw[at : at + length])
            at += length
    if len(values) != count:
        raise InvalidArgument(
            f"unexpected number of string elements {len(values)} for inference input "
            f"'{tensor.name}', expecting {count} for its shape {list(tensor.shape)}"
        )
    return values


def text(tensor: pb.ModelInferRequest.InferInputTensor, raw: bytes | None) -> str:
    """The one UTF-8 string of a BYTES tensor of shape [1]."""
    (value,) = byte_strings(tensor, raw)
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(
            f"inference input '{tensor.name}' = {shown(value)} is not UTF-8 text ({exc.reason} "
            f"at byte {exc.start})"
        ) from None


def serialize_byte_strings(values: Sequence[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(v)) + v for v in values)


def output(
    name: str, datatype: str, values: Any, shape: Sequence[int] | None = None
) -> tuple[pb.ModelInferResponse.InferOutputTensor, bytes]:
    """A response tensor and its raw contents: ``values`` is a sequence of str/bytes for
    BYTES, else anything numpy turns into an array of that datatype."""
    if datatype == "BYTES":
        items = [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values]
        raw = serialize_byte_strings(items)
        count = len(items)
    else:
        dtype = {"INT64": "<i8", "FP32": "<f4"}[datatype]
        array = np.ascontiguousarray(values, dtype=dtype)
        raw = array.tobytes()
        count = array.size
    tensor = pb.ModelInferResponse.InferOutputTensor(
        name=name, datatype=datatype, shape=list(shape) if shape is not None else [count]
    )
    return tensor, raw
