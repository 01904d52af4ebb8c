"""Package validation: every broken package is refused with a clear message, alone."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from support import as_format_1, copy_package, edit_manifest

from rnnserve_server.errors import NotFound, Unavailable
from rnnserve_server.manifest import MANIFEST_FILE
from rnnserve_server.modelpackage import load_package
from rnnserve_server.repository import Repository
from rnnserve_server.runtime import ProviderChoice
from rnnserve_server.trainingmarks import MARK_FILE
from rnnserve_train.reference import ReferenceModel

CPU = ProviderChoice.resolve("cpu", allow_cpu_fallback=False)


def test_the_tiny_package_is_valid(tiny_package: Path) -> None:
    package = load_package(tiny_package)
    manifest = package.manifest
    assert manifest.cell == "gru" and manifest.shape == "many-to-many"
    assert manifest.output.kind == "vocabulary"
    assert manifest.tokenizer.size == package.tokenizer.size
    for name in ("vocab.json", "step.onnx", "head.onnx", "weights.bin", "MODEL_CARD.md"):
        assert (tiny_package / name).is_file()


def _refer_elsewhere(package: Path) -> None:
    """Point the step graph's first shared tensor at another file."""
    path = package / "step.onnx"
    model = onnx.load(str(path), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.external_data)
    next(e for e in tensor.external_data if e.key == "location").value = "other.bin"
    onnx.save(model, str(path))


def _truncate(path: Path) -> None:
    with path.open("r+b") as file:
        file.truncate(path.stat().st_size // 2)


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
        "cannot load the head graph",
    ),
    "weights file missing": (lambda p: (p / "weights.bin").unlink(), "weights.bin: missing"),
    "weights file truncated": (
        lambda p: _truncate(p / "weights.bin"),
        "lie beyond the end of weights.bin",
    ),
    "weights in another file": (_refer_elsewhere, "not the package's weights file"),
    "format 1 weights not npz": (
        lambda p: edit_manifest(
            p, lambda m: (as_format_1(m), m.update(weights_file="weights.bin"))
        ),
        "not an .npz archive",
    ),
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


# A package of format 1, written by the exporter before packages shared their weights:
# every graph holds its own, and weights.npz holds them in the notation of MODELS.md.
FORMAT_1_PACKAGE = Path(__file__).parents[1] / "fixtures" / "format1" / "format1-gru" / "1"


def test_a_format_1_package_still_serves(tmp_path: Path) -> None:
    package = copy_package(FORMAT_1_PACKAGE, tmp_path, "format1-gru")
    repo = Repository.load(tmp_path, CPU)
    runtime = repo.get("format1-gru").runtime
    assert runtime.package.manifest.format_version == 1 and runtime.weights.nbytes == 0
    with np.load(package / "weights.npz") as archive:
        reference = ReferenceModel("gru", {key: archive[key] for key in archive.files})
    tokens = np.array([5, 9, 3, 17], dtype=np.int64)
    logits, state = runtime.run_inputs(tokens, runtime.zeros(1))
    expected_logits, expected_state = reference.sequence(
        tokens[None], np.array([len(tokens)]), reference.zero_state(1)
    )
    np.testing.assert_allclose(state, expected_state, atol=1e-5)
    np.testing.assert_allclose(logits, expected_logits, atol=1e-4)


def test_the_graphs_of_a_package_share_one_buffer(tiny_package: Path) -> None:
    """Every graph's session is handed the same OrtValue for a tensor, a view of the one
    read of weights.bin."""
    runtime = Repository.load(tiny_package.parent.parent, CPU).get(tiny_package.parent.name).runtime
    assert runtime.weights.nbytes == (tiny_package / "weights.bin").stat().st_size
    step, head = runtime.weights.of("step"), runtime.weights.of("head")
    assert head and set(head) <= set(step)
    for name, value in head.items():
        assert value is step[name], name


def _mark(directory: Path, updated: float) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MARK_FILE).write_text(
        json.dumps(
            {
                "name": directory.name,
                "step": 30,
                "steps": 120,
                "phase": "training",
                "started": updated - 10,
                "updated": updated,
            }
        )
    )


def test_a_model_still_training_is_unavailable_not_unknown(
    tiny_package: Path, tmp_path: Path
) -> None:
    copy_package(tiny_package, tmp_path, "served")
    _mark(tmp_path / "coming", time.time())
    _mark(tmp_path / "abandoned", time.time() - 3600)  # its trainer died long ago
    repo = Repository.load(tmp_path, CPU)
    assert list(repo.models) == [("served", 1)] and not repo.broken
    assert [m.name for m in repo.training()] == ["coming"]
    with pytest.raises(Unavailable, match=r"'coming' is still training \(training, step 30/120"):
        repo.get("coming")
    with pytest.raises(Unavailable, match="still training"):
        repo.get("coming", 1)
    with pytest.raises(NotFound, match="'abandoned' is not loaded"):
        repo.get("abandoned")
    for name in ("../coming", "m" * 5000, ".hidden"):  # no package bears such a name
        with pytest.raises(NotFound):
            repo.get(name)
    # Written after the last rescan: unavailable until the next one loads it.
    (tmp_path / "coming" / MARK_FILE).unlink()
    copy_package(tiny_package, tmp_path, "coming")
    with pytest.raises(Unavailable, match="not loaded yet; the next rescan"):
        repo.get("coming")
    repo.reload()
    assert repo.get("coming").version == 1 and repo.training() == []
