"""A package's weights, read once per model and shared by the sessions of all its graphs.

A format-3 package keeps every weight tensor once, in its weights file; the graphs'
initializers reference it (ONNX external data: file, offset, length). Left to itself,
onnxruntime would read or map that file once per graph. Instead the file is read once,
each tensor a graph references becomes an OrtValue over that buffer (no copy), and every
session gets the same OrtValues (``SessionOptions.add_initializer``).

onnxruntime trusts the buffer it is handed (a tensor shorter than its graph declares
crashes the process), so every reference is checked first: the file it names, its range
inside it, and its length for its element type and shape. docs/model-package.md has the
measured memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import external_data_helper

from rnnserve_server.manifest import PackageError
from rnnserve_server.modelpackage import ModelPackage


@dataclass(frozen=True)
class SharedWeights:
    """The OrtValues of each graph's external initializers, by initializer name."""

    by_graph: Mapping[str, Mapping[str, ort.OrtValue]] = field(default_factory=dict)
    # The weights file's bytes, which the OrtValues point into: kept alive with them.
    buffer: np.ndarray[Any, np.dtype[np.uint8]] | None = None

    def of(self, kind: str) -> Mapping[str, ort.OrtValue]:
        return self.by_graph.get(kind, {})

    @property
    def nbytes(self) -> int:
        return 0 if self.buffer is None else int(self.buffer.nbytes)


def load_shared_weights(package: ModelPackage) -> SharedWeights:
    """Read the weights file of a format-3 package once; nothing for formats 1 and 2
    (whose graphs hold their own weights)."""
    manifest = package.manifest
    if not manifest.shares_weights:
        return SharedWeights()
    weights_path = package.path / manifest.weights_file
    buffer = np.fromfile(weights_path, dtype=np.uint8)
    values: dict[tuple[int, str, tuple[int, ...]], ort.OrtValue] = {}
    by_graph: dict[str, dict[str, ort.OrtValue]] = {}
    for kind in manifest.graphs:
        path = package.graph_path(kind)
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # protobuf raises its own DecodeError
            raise PackageError(f"{path}: cannot load the {kind} graph: not ONNX ({exc})") from None
        graph_values: dict[str, ort.OrtValue] = {}
        for tensor in model.graph.initializer:
            if not external_data_helper.uses_external_data(tensor):
                continue
            array = _referenced(tensor, path, weights_path, buffer)
            key = (array.__array_interface__["data"][0], array.dtype.str, array.shape)
            if key not in values:
                values[key] = ort.OrtValue.ortvalue_from_numpy(array)
            graph_values[tensor.name] = values[key]
        by_graph[kind] = graph_values
    return SharedWeights(by_graph, buffer)


def _referenced(
    tensor: onnx.TensorProto,
    graph: Path,
    weights: Path,
    buffer: np.ndarray[Any, np.dtype[np.uint8]],
) -> np.ndarray[Any, Any]:
    """The array a graph's external initializer refers to, as a view of ``buffer``."""
    where = f"{graph}: initializer {tensor.name!r}"
    info = external_data_helper.ExternalDataInfo(tensor)
    if info.location != weights.name:
        raise PackageError(
            f"{where} refers to {info.location!r}, not the package's weights file {weights.name!r}"
        )
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    except (KeyError, TypeError, ValueError):
        raise PackageError(f"{where}: unsupported element type {tensor.data_type}") from None
    shape = tuple(int(d) for d in tensor.dims)
    nbytes = math.prod(shape) * dtype.itemsize
    offset = int(info.offset or 0)
    length = nbytes if info.length is None else int(info.length)
    if length != nbytes or offset < 0:
        raise PackageError(
            f"{where}: {length} bytes at offset {offset}, but {dtype.name}{list(shape)} "
            f"takes {nbytes}"
        )
    if offset + nbytes > buffer.size:
        raise PackageError(
            f"{where}: bytes {offset}..{offset + nbytes} lie beyond the end of {weights.name} "
            f"({buffer.size} bytes)"
        )
    # ONNX external data is little-endian; a misaligned or foreign-order tensor is copied.
    array = buffer[offset : offset + nbytes].view(dtype.newbyteorder("<")).reshape(shape)
    if not (array.flags.aligned and array.dtype.isnative):
        array = array.astype(dtype.newbyteorder("="))
    return array
