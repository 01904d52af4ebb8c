"""The manifest's format 2 fields (input, state, output values, constant starts), and
format 1 packages, which load unchanged."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import as_format_1, copy_package, edit_manifest, embed_weights

from rnnserve_server.manifest import (
    CELLS,
    Manifest,
    OutputSpec,
    PackageError,
    StatePart,
    cell_state,
)
from rnnserve_server.modelpackage import load_package, part_bound, state_violation
from rnnserve_server.repository import Model
from rnnserve_server.runtime import ModelRuntime, ProviderChoice

CPU = ProviderChoice.resolve("cpu", allow_cpu_fallback=False)


@pytest.mark.parametrize("version", [1, 2])
def test_a_package_of_an_older_format_loads_and_serves_as_before(
    version: int, tiny_package: Path, tmp_path: Path
) -> None:
    """Format 1 and 2 (every graph embedding its weights, weights.npz beside them)."""
    old = copy_package(tiny_package, tmp_path, "old")
    embed_weights(old, version)
    package = load_package(old)
    manifest = package.manifest
    assert manifest.format_version == version and not manifest.shares_weights
    assert manifest.input.kind == "tokens"
    assert manifest.state_layout == cell_state("gru", manifest.layers, manifest.hidden_size)
    current = ModelRuntime(load_package(tiny_package), CPU)
    runtime = ModelRuntime(package, CPU)
    assert runtime.weights.nbytes == 0  # nothing shared: each graph holds its own
    np.testing.assert_array_equal(runtime.initial_state, current.initial_state)
    tokens = np.array([3, 4], dtype=np.int64)
    state = runtime.zeros(2)
    for got, want in zip(runtime.step(tokens, state), current.step(tokens, state), strict=True):
        np.testing.assert_array_equal(got, want)
    assert runtime.generation_graph(4) is not None  # unrolled from embedded weights too
    assert isinstance(Model(package=package, runtime=runtime).name, str)


def test_a_format_1_manifest_with_a_format_2_field_is_refused(
    tiny_package: Path, tmp_path: Path
) -> None:
    old = copy_package(tiny_package, tmp_path, "old")
    edit_manifest(old, lambda m: (as_format_1(m), m.update(input={"kind": "tokens", "size": 0})))
    with pytest.raises(PackageError, match=r"unknown field\(s\) \['input'\]"):
        load_package(old)


def manifest_of(cell: str, layers: int = 1, hidden_size: int = 3, **changes: Any) -> Manifest:
    """A manifest of this cell (nothing but its state matters here)."""
    return Manifest(
        name="m", version=1, description="", shape="many-to-many", cell=cell, layers=layers,
        hidden_size=hidden_size, tokenizer=None, output=OutputSpec("regression", values=1),
        graphs={}, **changes,
    )  # fmt: skip


def test_the_known_cells_state_layouts() -> None:
    lstm = cell_state("lstm", 2, 8)
    assert lstm.rows == 4 and lstm.width == 8
    assert lstm.parts == (StatePart("h", 2, 1.0), StatePart("c", 2, None))
    assert cell_state("rnn-relu", 3, 5).parts == (StatePart("h", 3, None),)
    assert cell_state("gru-torch", 1, 5).parts == (StatePart("h", 1, 1.0),)


def test_every_known_cell_bounds_each_state_part() -> None:
    """A known cell's h lies in [-1, 1] but for rnn-relu's; what has no bound of its own
    (rnn-relu's h, an LSTM's c) takes max_unbounded_state, unless the package states a
    bound for its c."""
    for cell in CELLS:
        if cell == "custom":
            continue
        manifest = manifest_of(cell, layers=2)
        bounds = {p.name: part_bound(manifest, p, 7.0)[0] for p in manifest.state_layout.parts}
        expected = {"h": 7.0 if cell == "rnn-relu" else 1.0}
        assert bounds == (expected | {"c": 7.0} if cell == "lstm" else expected), cell
    stated = manifest_of("lstm", state=cell_state("lstm", 1, 3, cell_bound=30.0))
    assert [part_bound(stated, p, 7.0)[0] for p in stated.state_layout.parts] == [1.0, 30.0]


def test_state_violation_names_the_part_the_position_and_the_bound() -> None:
    manifest = manifest_of("lstm", state=cell_state("lstm", 1, 3, cell_bound=10.0))
    good = np.array([[0.5, -1.0, 0.0], [9.0, -10.0, 3.0]], np.float32)
    assert state_violation(manifest, good) is None
    over = good.copy()
    over[1, 0] = 11.0
    assert str(state_violation(manifest, over).describe("state")) == (  # type: ignore[union-attr]
        "state.c[0, 0] = 11.0 is out of range; allowed: |c| <= 10 (the bound of c in the "
        "model's manifest.state)"
    )
    h_over = good.copy()
    h_over[0, 2] = 1.5
    found = state_violation(manifest, h_over)
    assert found is not None and "state.h[0, 2] = 1.5" in found.describe("state")
    assert "the lstm cell's h lies in [-1, 1]" in found.describe("state")
    nan = good.copy()
    nan[1, 1] = np.nan
    found = state_violation(manifest, nan)
    assert found is not None and found.describe("state") == "state.c[0, 1] = nan: not finite"
    unbounded = manifest_of("lstm")  # c: finite, then the server's setting
    assert state_violation(unbounded, over) is None
    assert state_violation(unbounded, over, 10.5) is not None


BREAKAGES: dict[str, tuple[Callable[[dict[str, Any]], object], str]] = {
    "unknown input kind": (
        lambda m: m["input"].update(kind="audio"),
        "manifest.input.kind = 'audio': expected one of ('tokens', 'vectors')",
    ),
    "token input with a size": (
        lambda m: m["input"].update(size=3),
        "manifest.input.size = 3: expected an integer in 0..0",
    ),
    "vectors with a tokenizer": (
        lambda m: m["input"].update(kind="vectors", size=4),
        "manifest.tokenizer must be null for a 'vectors' input",
    ),
    "vectors into a vocabulary": (
        lambda m: (m["input"].update(kind="vectors", size=4), m.update(tokenizer=None)),
        "manifest.output.kind = 'vocabulary' needs a 'tokens' input",
    ),
    "state of another layout": (
        lambda m: m["state"]["parts"].append({"name": "c", "rows": 1, "bound": 5.0}),
        "cell 'gru' with 1 layer(s) of 32 has width 32, parts [('h', 1, 1.0)]",
    ),
    "h bound changed": (
        lambda m: m["state"]["parts"][0].update(bound=2.0),
        "parts [('h', 1, 2.0)]",
    ),
    "negative bound": (
        lambda m: m["state"]["parts"][0].update(bound=-1),
        "manifest.state.parts[0].bound = -1: expected null or a number >= 0",
    ),
    "no parts": (lambda m: m["state"].update(parts=[]), "manifest.state.parts: at least one"),
    "regression without values": (
        lambda m: m["output"].update(kind="regression"),
        "manifest.output.values = 0: a regression output needs its size",
    ),
    "values beside a vocabulary": (
        lambda m: m["output"].update(values=2),
        "manifest.output.values must be 0 for a vocabulary output",
    ),
    "constant start without a file": (
        lambda m: m["initial_state"].update(kind="constant", token=None),
        "manifest.initial_state.file names the .npy state of kind 'constant'",
    ),
    "head missing for a vocabulary": (
        lambda m: m["graphs"].pop("head"),
        "a 'vocabulary' output needs the 'head' graph",
    ),
    "graph names of another input": (
        lambda m: m["graphs"]["step"].update(inputs=["inputs", "state"]),
        "the format requires ('tokens', 'state')/('logits', 'state_out') for a tokens input",
    ),
    "custom cell of another shape": (
        lambda m: m.update(cell="custom", layers=2),
        "for a 'custom' cell they are the state's rows and width (1, 32)",
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_format_2_fields_are_checked(breakage: str, tiny_package: Path, tmp_path: Path) -> None:
    bad = copy_package(tiny_package, tmp_path, "bad")
    change, message = BREAKAGES[breakage]
    edit_manifest(bad, change)
    with pytest.raises(PackageError) as caught:
        load_package(bad)
    assert message in str(caught.value)


def test_a_constant_initial_state_is_checked_and_used(tiny_package: Path, tmp_path: Path) -> None:
    package = copy_package(tiny_package, tmp_path, "constant")
    start = np.linspace(-0.5, 0.5, 32, dtype=np.float32).reshape(1, 32)
    np.save(package / "initial_state.npy", start)
    edit_manifest(
        package,
        lambda m: m["initial_state"].update(kind="constant", token=None, file="initial_state.npy"),
    )
    runtime = ModelRuntime(load_package(package), CPU)
    np.testing.assert_array_equal(runtime.initial_state, start)

    np.save(package / "initial_state.npy", start * 4)  # |h| up to 2: beyond h's bound
    with pytest.raises(
        PackageError, match=r"initial_state.npy: state.h\[0, 0\] = -2.0 is out of range"
    ):
        load_package(package)
    np.save(package / "initial_state.npy", start[:, :31])
    with pytest.raises(PackageError, match=r"float32\[1, 31\], expected float32\[1, 32\]"):
        load_package(package)


def test_a_package_of_the_zoo_branchs_pre_release_format_2_needs_one_number_changed(
    tiny_package: Path, tmp_path: Path
) -> None:
    """Format 1's fields, graphs referencing a raw weights.bin: refused with the fix
    named (format_version 3), and served the same as format 3 once it is applied."""
    old = copy_package(tiny_package, tmp_path, "old")

    def as_zoo_format_2(manifest: dict[str, Any]) -> None:
        as_format_1(manifest)
        manifest["format_version"] = 2

    edit_manifest(old, as_zoo_format_2)
    with pytest.raises(PackageError, match=r'not an \.npz archive.*set "format_version": 3'):
        load_package(old)
    edit_manifest(old, lambda m: m.update(format_version=3))
    runtime = ModelRuntime(load_package(old), CPU)
    current = ModelRuntime(load_package(tiny_package), CPU)
    tokens = np.array([3, 4], dtype=np.int64)
    state = runtime.zeros(2)
    for got, want in zip(runtime.step(tokens, state), current.step(tokens, state), strict=True):
        np.testing.assert_array_equal(got, want)
