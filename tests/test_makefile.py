"""`make help`: every target with its text, the variables in it shown with their values."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_help_shows_the_variables_values() -> None:
    def help_text(*assignments: str) -> str:
        return subprocess.run(
            ["make", "-s", "-C", str(ROOT), "help", *assignments],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip

    shown = help_text()
    targets = re.findall(r"^([a-z-]+):.*## ", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert [line.split()[1] for line in shown.splitlines()] == targets
    assert "$(" not in shown
    assert "into .venv (editable)" in shown and "on 127.0.0.1:50051" in shown
    moved = help_text("VENV=/opt/rnnserve-env", "PORT=6000", "MODELS=/srv/models")
    assert "into /opt/rnnserve-env (editable)" in moved and "on 127.0.0.1:6000" in moved
    assert "(keeps /opt/rnnserve-env and /srv/models)" in moved
