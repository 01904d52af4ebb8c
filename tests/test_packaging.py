"""Each part installs with only its own dependencies (read from the installed metadata)."""

from __future__ import annotations

import re
from importlib import metadata

import pytest
from packaging.requirements import Requirement


def closure(distribution: str) -> set[str]:
    """Every distribution `distribution` pulls in, without extras, on this Python."""
    seen: set[str] = set()
    pending = [distribution]
    while pending:
        name = re.sub(r"[-_.]+", "-", pending.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return seen


def test_the_client_needs_neither_torch_nor_onnxruntime_nor_numpy() -> None:
    needed = closure("rnnserve")
    assert needed >= {"rnnserve", "grpcio", "protobuf"}
    assert not needed & {"torch", "onnxruntime", "onnxruntime-gpu", "numpy"}


def test_the_server_needs_onnxruntime_but_not_torch() -> None:
    needed = closure("rnnserve-server")
    assert {"onnxruntime", "numpy", "rnnserve"} <= needed
    assert "torch" not in needed


def test_training_pins_the_cpu_torch() -> None:
    requirements = metadata.requires("rnnserve-train") or []
    assert "torch==2.13.0" in requirements
    assert "rnnserve-server==0.1.0" in requirements


@pytest.mark.parametrize(
    ("script", "distribution"),
    [
        ("rnnserve", "rnnserve"),
        ("rnnserve-server", "rnnserve-server"),
        ("rnnserve-train", "rnnserve-train"),
    ],
)
def test_console_scripts(script: str, distribution: str) -> None:
    scripts = {e.name for e in metadata.distribution(distribution).entry_points}
    assert script in scripts
