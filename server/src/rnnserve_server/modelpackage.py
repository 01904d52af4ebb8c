"""The model package: the contract between ``training/`` (writes) and the server (reads).

A package is a directory ``<repository>/<name>/<version>/`` holding::

    manifest.json     this module's Manifest, as JSON (docs/model-package.md)
    vocab.json        the vocabulary, {"tokens": [...]} in id order (token inputs only)
    step.onnx         (tokens [B] int64 | inputs [B,n_x] f32, state [S,B,W] f32)
                        -> (logits [B,K], values [B,R], state_out [S,B,W])
    head.onnx         optional: (state) -> (logits, values): the output for the current state
    sequence.onnx     optional: a whole prompt per row in one run (see graph_signature)
    encoder.onnx      optional: source tokens -> initial state (seq2seq)
    condition.onnx    optional: condition index -> initial state (one-to-many)
    initial_state.npy optional: a constant initial state [S, W] (initial_state.kind constant)
    weights.bin       every weight tensor once, which the graphs reference (ONNX external
                      data); format 1 and 2 packages embed the weights in each graph and
                      hold weights.npz (the notation of docs/MODELS.md, or a state_dict)
    MODEL_CARD.md     what the model is, its data, its metrics, a sample

A session's state is one float32 array [S, W] whose rows the manifest's ``state`` names
(an LSTM's: the h rows of every layer, then the c rows), so the slot pool, the batcher's
gather/scatter, the exported bytes and the shared store handle every model alike.

The manifest is ``manifest``'s; this module reads and checks the package's other files
and states against it (everything that needs no inference engine); the runtime checks
the graphs' signatures against the manifest when it loads them.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rnnserve_server.errors import FailedPrecondition
from rnnserve_server.manifest import (
    BOUNDED_CELLS,
    MANIFEST_FILE,
    Manifest,
    PackageError,
    StatePart,
    TokenizerSpec,
)
from rnnserve_server.tokenizer import Tokenizer

# A blend computed in float32 may land an ulp or so past its bound: values are checked
# against bound * (1 + ROUNDING_MARGIN).
ROUNDING_MARGIN = 2**-20


@dataclass(frozen=True)
class ModelPackage:
    """A checked package on disk: its manifest, tokenizer and file paths."""

    path: Path
    manifest: Manifest
    tokenizer: Tokenizer | None  # None for a vectors input
    initial_state: np.ndarray[Any, np.dtype[np.float32]] | None = None  # kind constant: [S, W]

    def graph_path(self, kind: str) -> Path:
        return self.path / self.manifest.graphs[kind].file

    @property
    def vocabulary(self) -> Tokenizer:
        """The tokenizer of a token model; FAILED_PRECONDITION for a vectors model."""
        if self.tokenizer is None:
            raise FailedPrecondition(
                f"model {self.manifest.name} reads vectors of {self.manifest.input.size} "
                "floats, not tokens or text: it has no vocabulary"
            )
        return self.tokenizer

    @property
    def key(self) -> tuple[str, int]:
        return self.manifest.name, self.manifest.version


def load_package(path: Path) -> ModelPackage:
    """Read and check a package directory; raise PackageError with a clear message."""
    manifest_path = path / MANIFEST_FILE
    try:
        data = json.loads(manifest_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackageError(f"{manifest_path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{manifest_path}: unreadable: {exc}") from None
    manifest = Manifest.from_dict(data)

    if path.name != str(manifest.version) or path.parent.name != manifest.name:
        raise PackageError(
            f"{path}: manifest says {manifest.name}/{manifest.version}, "
            f"but the package lies in {path.parent.name}/{path.name}"
        )
    files = [manifest.weights_file, manifest.card_file]
    files += [g.file for g in manifest.graphs.values()]
    if manifest.tokenizer is not None:
        files.append(manifest.tokenizer.vocabulary_file)
    if manifest.initial_state.file is not None:
        files.append(manifest.initial_state.file)
    for name in files:
        _check_inside(path, name)

    tokenizer = None if manifest.tokenizer is None else _load_tokenizer(path, manifest.tokenizer)
    if not manifest.shares_weights:
        _check_npz(path / manifest.weights_file, manifest.format_version)
    initial = None
    if manifest.initial_state.file is not None:
        initial = _load_initial_state(path / manifest.initial_state.file, manifest)
    return ModelPackage(path=path, manifest=manifest, tokenizer=tokenizer, initial_state=initial)


def _load_tokenizer(path: Path, spec: TokenizerSpec) -> Tokenizer:
    try:
        tokens = Tokenizer.load_tokens(path / spec.vocabulary_file)
        tokenizer = Tokenizer(
            kind=spec.kind,
            tokens=tokens,
            special_tokens=dict(spec.special_tokens),
            normalize=spec.normalize,
            lowercase=spec.lowercase,
        )
    except (OSError, ValueError) as exc:
        raise PackageError(f"{path / spec.vocabulary_file}: {exc}") from None
    if tokenizer.size != spec.size:
        raise PackageError(
            f"{path / spec.vocabulary_file}: {tokenizer.size} tokens, "
            f"but manifest.tokenizer.size = {spec.size}"
        )
    return tokenizer


def _load_initial_state(path: Path, manifest: Manifest) -> np.ndarray[Any, np.dtype[np.float32]]:
    """A constant initial state: float32 [S, W], finite, within every part's bound."""
    try:
        state: np.ndarray[Any, Any] = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise PackageError(f"{path}: not a .npy array: {exc}") from None
    if state.dtype != np.float32 or state.shape != manifest.state_shape:
        raise PackageError(
            f"{path}: {state.dtype}{list(state.shape)}, expected float32"
            f"{list(manifest.state_shape)} (the manifest's state rows and width)"
        )
    # The server's max_unbounded_state is not known here: unbounded parts need only be
    # finite (an import of such a session is checked against the setting).
    violation = state_violation(manifest, state)
    if violation is not None:
        raise PackageError(f"{path}: {violation.describe('state')}")
    return state


@dataclass(frozen=True)
class StateViolation:
    """The first value of a state that its part's bound does not allow: where it is
    (the part, and the row and column within the part), what it is, and why not."""

    part: str
    row: int
    column: int
    value: float
    bound: float
    reason: str

    def describe(self, prefix: str) -> str:
        position = f"{prefix}.{self.part}[{self.row}, {self.column}]"
        if not math.isfinite(self.value):
            return f"{position} = {self.value}: not finite"
        return (
            f"{position} = {self.value!r} is out of range; allowed: "
            f"|{self.part}| <= {self.bound:g} ({self.reason})"
        )


def part_bound(
    manifest: Manifest, part: StatePart, max_unbounded_state: float
) -> tuple[float, str]:
    """The bound of one state part and why it is that: the cell's own (|h| <= 1), the
    one the package states, or (none stated) the server's max_unbounded_state."""
    if part.bound is None:
        return max_unbounded_state, (
            f"the setting max_unbounded_state: the {manifest.cell} cell's {part.name} has no "
            "bound of its own"
        )
    if manifest.cell in BOUNDED_CELLS and part.name == "h":
        return part.bound, f"the {manifest.cell} cell's h lies in [-1, 1]"
    return part.bound, f"the bound of {part.name} in the model's manifest.state"


def state_violation(
    manifest: Manifest, state: np.ndarray[Any, Any], max_unbounded_state: float = math.inf
) -> StateViolation | None:
    """The first value of ``state`` [S, W] that is not finite or lies beyond its part's
    bound (``part_bound``), or None: the one check of every state the server takes in
    (imports, shared-store records, a package's constant initial state)."""
    start = 0
    for part in manifest.state_layout.parts:
        rows = state[start : start + part.rows]
        start += part.rows
        bound, reason = part_bound(manifest, part, max_unbounded_state)
        bad = ~(np.abs(rows) <= bound * (1 + ROUNDING_MARGIN))  # NaN compares False
        if bad.any():
            row, column = (int(i) for i in np.argwhere(bad)[0])
            return StateViolation(part.name, row, column, float(rows[row, column]), bound, reason)
    return None


def _check_npz(path: Path, format_version: int) -> None:
    try:
        with zipfile.ZipFile(path) as archive:
            if not any(n.endswith(".npy") for n in archive.namelist()):
                raise PackageError(f"{path}: holds no arrays")
    except zipfile.BadZipFile as exc:
        # The zoo branch's pre-release "format 2" had format 3's storage under format 1's
        # fields, which format 3 reads as they are: the fix is one number.
        raise PackageError(
            f"{path}: not an .npz archive ({exc}), which a format {format_version} "
            "package's weights file is; if its graphs reference it as ONNX external data "
            f'(shared weights), the package is format 3: set "format_version": 3 in '
            f"{path.parent / MANIFEST_FILE}"
        ) from None


def _check_inside(package: Path, name: str) -> None:
    target = (package / name).resolve()
    if package.resolve() not in target.parents:
        raise PackageError(f"{package}: file {name!r} lies outside the package")
    if not target.is_file():
        raise PackageError(f"{package / name}: missing")
