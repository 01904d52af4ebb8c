"""The documentation's examples, run as written against a real server: the asyncio
examples of the README and docs/api.md, and docs/api.md's table of metrics against what
the server exports."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from support import ServerThread, exported_metrics

ROOT = Path(__file__).resolve().parents[2]


def python_blocks(document: Path, containing: str) -> list[str]:
    blocks = re.findall(r"```python\n(.*?)```", document.read_text(), re.DOTALL)
    return [block for block in blocks if containing in block]


@pytest.mark.parametrize("document", ["README.md", "docs/api.md"])
def test_the_asyncio_example_runs_as_written(
    document: str, server: ServerThread, model_name: str
) -> None:
    (example,) = python_blocks(ROOT / document, "AsyncClient(")
    # As written, but with this test's server and its model in place of char-gru's.
    code = example.replace("127.0.0.1:50051", server.address).replace("char-gru", model_name)
    before = server.run(lambda: len(server.running.engine.store))  # type: ignore[union-attr]
    shown = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert shown.returncode == 0, shown.stderr
    assert "TokenProb(" in shown.stdout and len(shown.stdout.splitlines()) >= 2
    after = server.run(lambda: len(server.running.engine.store))  # type: ignore[union-attr]
    assert after == before  # `async with` closed every session it opened


def documented_metrics() -> dict[str, tuple[str, set[str], list[str]]]:
    """docs/api.md's metrics table: name -> (type, labels, bucket bounds)."""
    text = (ROOT / "docs" / "api.md").read_text()
    table = text[text.index("| metric | type | labels | buckets |") :].split("\n\n")[0]
    rows = {}
    for line in table.splitlines()[2:]:
        name, kind, labels, buckets = (cell.strip() for cell in line.strip("|").split("|"))
        rows[name.strip("`")] = (
            kind,
            set(re.findall(r"`(\w+)`", labels.split("(")[0])),
            [b.strip() for b in buckets.split(",") if b.strip()],
        )
    return rows


def test_the_documented_metrics_are_the_exported_ones(models_dir: Path, model_name: str) -> None:
    families = exported_metrics(models_dir, model_name)
    exported = {}
    for family in families:
        if not family.name.startswith("rnnserve_"):
            continue
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {k for s in family.samples for k in s.labels} - {"le"}
        bounds = sorted(
            {s.labels["le"] for s in family.samples if "le" in s.labels} - {"+Inf"}, key=float
        )
        exported[name] = (family.type, labels, bounds)
    documented = documented_metrics()
    assert set(documented) == set(exported)
    for name, (kind, labels, bounds) in documented.items():
        assert (kind, labels) == exported[name][:2], name
        assert [float(b) for b in bounds] == [float(b) for b in exported[name][2]], name
