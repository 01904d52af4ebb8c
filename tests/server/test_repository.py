"""Package validation: every broken package is refused with a clear message, alone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from support import copy_package, edit_manifest

from rnnserve_server.errors import NotFound
from rnnserve_server.modelpackage import MANIFEST_FILE, load_package
from rnnserve_server.repository import Repository
from rnnserve_server.runtime import ProviderChoice

CPU = ProviderChoice.resolve("cpu", allow_cpu_fallback=False)


def test_the_tiny_package_is_valid(tiny_package: Path) -> None:
    package = load_package(tiny_package)
    manifest = package.manifest
    assert manifest.cell == "gru" and manifest.shape == "many-to-many"
    assert manifest.output.kind == "vocabulary"
    assert manifest.tokenizer.size == package.tokenizer.size
    for name in ("vocab.json", "step.onnx", "head.onnx", "weights.npz", "MODEL_CARD.md"):
        assert (tiny_package / name).is_file()


BREAKAGES: dict[str, tuple[Callable[[Path], object], str]] = {
    "manifest not json": (
        lambda p: (p / MANIFEST_FILE).write_text("{nope"),
        "manifest.json: unreadable",
    ),
    "manifest missing": (lambda p: (p / MANIFEST_FILE).unlink(), "manifest.json: missing"),
    "unknown cell": (
        lambda p: edit_manifest(p, lambda m: m.update(cell="lstm-peephole")),
        "manifest.cell = 'lstm-peephole': expected one of",
    ),
    "negative layers": (
        lambda p: edit_manifest(p, lambda m: m.update(layers=-1)),
        "manifest.layers = -1: expected an integer in 1..64",
    ),
    "unknown field": (
        lambda p: edit_manifest(p, lambda m: m.update(colour="blue")),
        "unknown field(s) ['colour']",
    ),
    "missing graph file": (lambda p: (p / "step.onnx").unlink(), "step.onnx: missing"),
    "file outside package": (
        lambda p: edit_manifest(p, lambda m: m["graphs"]["head"].update(file="../../x.onnx")),
        "lies outside the package",
    ),
    "vocabulary size mismatch": (
        lambda p: edit_manifest(
            p, lambda m: m["tokenizer"].update(size=m["tokenizer"]["size"] + 1)
        ),
        "but manifest.tokenizer.size",
    ),
    "hidden size differs from the state": (
        lambda p: edit_manifest(p, lambda m: m.update(hidden_size=m["hidden_size"] + 1)),
        "has width 33, parts [('h', 1, 1.0)]",
    ),
    "hidden size differs from the graphs": (
        lambda p: edit_manifest(
            p,
            lambda m: (
                m.update(hidden_size=m["hidden_size"] + 1),
                m["state"].update(width=m["hidden_size"]),
            ),
        ),
        "state is tensor(float)",
    ),
    "corrupt graph": (
        lambda p: (p / "head.onnx").write_bytes(b"not a graph"),
        "onnxruntime cannot load the head graph",
    ),
    "weights not npz": (lambda p: (p / "weights.npz").write_text("x"), "not an .npz archive"),
    "directory name differs": (
        lambda p: edit_manifest(p, lambda m: m.update(version=7)),
        "but the package lies in",
    ),
}


@pytest.mark.parametrize("breakage", sorted(BREAKAGES))
def test_broken_package_is_refused_and_others_still_load(
    breakage: str, tiny_package: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = copy_package(tiny_package, tmp_path, "good")
    bad = copy_package(tiny_package, tmp_path, "bad")
    damage, message = BREAKAGES[breakage]
    damage(bad)
    repo = Repository.load(tmp_path, CPU)
    assert list(repo.models) == [("good", 1)]
    assert message in repo.broken[bad]
    assert any(message in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert repo.get("good").package.path == good
    with pytest.raises(NotFound):
        repo.get("bad")


def test_default_version_is_the_highest_loaded(tiny_package: Path, tmp_path: Path) -> None:
    for version in (1, 3, 2):
        copy_package(tiny_package, tmp_path, "lm", version)
    repo = Repository.load(tmp_path, CPU)
    assert repo.get("lm").version == 3
    assert repo.get("lm", 2).version == 2
    with pytest.raises(NotFound, match=r"model 'lm' has no version 9; loaded: \[1, 2, 3\]"):
        repo.get("lm", 9)
    with pytest.raises(NotFound, match="model 'other' is not loaded"):
        repo.get("other")


def test_missing_repository_serves_nothing(tmp_path: Path) -> None:
    repo = Repository.load(tmp_path / "absent", CPU)
    assert repo.models == {} and repo.list() == []


def test_cuda_requested_without_cuda(caplog: pytest.LogCaptureFixture) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="provider=cuda was requested but onnxruntime offers"):
        ProviderChoice.resolve("cuda", allow_cpu_fallback=False)
    choice = ProviderChoice.resolve("cuda", allow_cpu_fallback=True)
    assert [name for name, _ in choice.providers] == ["CPUExecutionProvider"]
    assert "falling back to the CPU" in caplog.text
