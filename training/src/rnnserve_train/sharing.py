"""Each weight once: the graphs of a package reference one file of tensors.

Export writes every graph with its tensors inside; ``share_weights`` then moves every
tensor that is a model parameter into the package's weights file, once, and points each
graph's initializer at it (ONNX external data: location, offset, length). onnxruntime,
onnx and Netron still load a graph on its own; the server reads the file once per model
and hands the same buffers to the sessions of all its graphs.

The stored tensors are named as the model's parameters (``cells.0.input_weight``,
``output.weight``, ...): ``read_parameters`` gives them back by name, and
``RNNLanguageModel.from_parameters`` rebuilds the model from them, whose
``to_seed_weights`` are its weights in the notation of MODELS.md
(``rnnserve-train seed-weights``).

A graph keeps only small constants of its own (axes, shapes, scalars: at most
``INLINE_BYTES``). A larger tensor that is no parameter would be a derived copy of
weights, and export refuses it: derive it in the graph from the parameters instead (as
the native sequence graphs do), so that onnxruntime makes it in memory when the session
starts. A user's module traced by ``package_torch`` is not ours to rewrite: what the
exporter folded there (a transposed weight, say) is stored too (``strict=False``), once
however many graphs hold it, under its initializer's name.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper, numpy_helper

ALIGNMENT = 64  # every tensor starts at a multiple of this in the weights file
INLINE_BYTES = 1024


class SharingError(RuntimeError):
    """A graph holds a tensor that is neither a parameter nor a small constant."""


def _content(array: np.ndarray) -> tuple[str, tuple[int, ...], bytes]:
    contiguous = np.ascontiguousarray(array)
    return contiguous.dtype.str, contiguous.shape, hashlib.sha256(contiguous.tobytes()).digest()


def _all_nodes(graph: onnx.GraphProto) -> Iterable[onnx.NodeProto]:
    """The nodes of ``graph`` and of every subgraph (a Scan's body)."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attribute.g)


def share_weights(
    graphs: Iterable[Path],
    parameters: Mapping[str, np.ndarray],
    weights: Path,
    *,
    strict: bool = True,
) -> None:
    """Write ``weights`` with every parameter the ``graphs`` hold, once, and rewrite each
    graph to reference it there. Raise SharingError for a large tensor that is no
    parameter, unless not ``strict``: then it is stored too (once)."""
    by_content: dict[tuple[str, tuple[int, ...], bytes], str] = {}
    for name, array in parameters.items():
        by_content.setdefault(_content(array), name)
    models = {path: onnx.load(str(path)) for path in graphs}
    stored: dict[str, np.ndarray] = {}
    for path, model in models.items():
        graph = model.graph
        for node in _all_nodes(graph):
            if any(a.type == onnx.AttributeProto.GRAPH and a.g.initializer for a in node.attribute):
                raise SharingError(f"{path.name}: node {node.name} has initializers of its own")
        renames: dict[str, str] = {}
        kept: list[onnx.TensorProto] = []
        for tensor in graph.initializer:
            array = numpy_helper.to_array(tensor)
            canonical = by_content.get(_content(array))
            if canonical is None and not strict and array.nbytes > INLINE_BYTES:
                canonical = _free_name(tensor.name, set(by_content.values()))
                by_content[_content(array)] = canonical
            if canonical is None:
                if array.nbytes > INLINE_BYTES:
                    raise SharingError(
                        f"{path.name}: initializer {tensor.name!r} {list(array.shape)} "
                        f"({array.nbytes} bytes) is no model parameter; a graph may keep "
                        f"constants of at most {INLINE_BYTES} bytes: derive it in the "
                        "graph from the parameters"
                    )
                kept.append(tensor)
                continue
            renames[tensor.name] = canonical
            stored.setdefault(canonical, array)
        for node in _all_nodes(graph):
            node.input[:] = [renames.get(n, n) for n in node.input]
        del graph.initializer[:]
        graph.initializer.extend(kept)
        for name in dict.fromkeys(renames.values()):  # each once, in order of first use
            graph.initializer.append(_reference(name, stored[name]))
    offsets = _write(weights, stored)
    for path, model in models.items():
        for tensor in model.graph.initializer:
            if tensor.name in offsets:
                length = int(stored[tensor.name].nbytes)
                for key, value in (
                    ("location", weights.name),
                    ("offset", str(offsets[tensor.name])),
                    ("length", str(length)),
                ):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
        onnx.save(model, str(path))
        onnx.checker.check_model(str(path), full_check=True)


def _free_name(name: str, taken: set[str]) -> str:
    """``name``, or ``name.2``, ``name.3``, ...: the first no other stored tensor has (two
    graphs' exporters may give different constants one name)."""
    candidate, suffix = name, 1
    while candidate in taken:
        suffix += 1
        candidate = f"{name}.{suffix}"
    return candidate


def _reference(name: str, array: np.ndarray) -> onnx.TensorProto:
    """An initializer whose data lies in the weights file (offset set once written)."""
    tensor = onnx.TensorProto()
    tensor.name = name
    tensor.data_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
    tensor.dims.extend(array.shape)
    tensor.data_location = onnx.TensorProto.EXTERNAL
    return tensor


def _write(path: Path, tensors: Mapping[str, np.ndarray]) -> dict[str, int]:
    """Each tensor's bytes (little-endian, C order) at an ALIGNMENT multiple; the offsets."""
    offsets: dict[str, int] = {}
    with path.open("wb") as file:
        for name, array in tensors.items():
            position = file.tell()
            padding = -position % ALIGNMENT
            file.write(b"\0" * padding)
            offsets[name] = position + padding
            file.write(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
    return offsets


def read_parameters(graphs: Iterable[Path]) -> dict[str, np.ndarray]:
    """Every tensor the ``graphs`` keep in their weights file, by name."""
    parameters: dict[str, np.ndarray] = {}
    for path in graphs:
        model = onnx.load(str(path), load_external_data=False)
        for tensor in model.graph.initializer:
            if external_data_helper.uses_external_data(tensor) and tensor.name not in parameters:
                external_data_helper.load_external_data_for_tensor(tensor, str(path.parent))
                parameters[tensor.name] = numpy_helper.to_array(tensor)
    return parameters
