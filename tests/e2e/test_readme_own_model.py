"""README "Serve your own model", run as written: the Python example packages a module,
the server serves it, and the CLI steps it."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from support import ServerProcess

README = Path(__file__).resolve().parents[2] / "README.md"
pytestmark = pytest.mark.slow


def section_blocks(language: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Serve your own model", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.DOTALL)


def test_the_readme_example_packages_serves_and_steps(tmp_path: Path) -> None:
    (python,) = section_blocks("python")
    (commands,) = section_blocks("bash")
    (tmp_path / "my_model.py").write_text(python, encoding="utf-8")
    run = subprocess.run(
        [sys.executable, "my_model.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "models/my-lstm/1"
    step = next(line for line in commands.splitlines() if line.startswith("rnnserve step"))
    server = ServerProcess("--models", str(tmp_path / "models"))
    try:
        answer = subprocess.run(
            [str(Path(sys.executable).with_name("rnnserve")), *shlex.split(step)[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={**os.environ, "RNNSERVE_ADDRESS": f"127.0.0.1:{server.port}"},
        )
    finally:
        server.stop()
    assert answer.returncode == 0, answer.stderr
    assert len([line for line in answer.stdout.splitlines() if line.strip()]) >= 3, answer.stdout
