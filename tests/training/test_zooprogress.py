"""What `rnnserve-train zoo` shows: on a real terminal (a pty), a bar per model in
training with its step from the model's training mark, and a line per model written;
in a log file, plain periodic lines without carriage returns."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from rnnserve_server.trainingmarks import MARK_FILE, TrainingMark
from rnnserve_train.zooprogress import ZooProgress


def mark(out: Path, name: str, step: int, steps: int) -> None:
    now = time.time()
    (out / name).mkdir(parents=True, exist_ok=True)
    (out / name / MARK_FILE).write_text(
        json.dumps(asdict(TrainingMark(name, step, steps, "training", now, now)))
    )


def read_until_closed(fd: int, into: list[bytes]) -> None:
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the terminal's other end is closed
            return
        if not chunk:
            return
        into.append(chunk)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_a_terminal_shows_a_bar_per_model_training_and_a_line_per_model_served(
    tmp_path: Path,
) -> None:
    controller, terminal = os.openpty()
    stream = os.fdopen(terminal, "w", encoding="utf-8")
    chunks: list[bytes] = []
    reader = threading.Thread(target=read_until_closed, args=(controller, chunks))
    reader.start()
    try:
        assert stream.isatty()
        with ZooProgress(tmp_path, ["char-gru", "word-gru"], stream, interval=0.02) as shown:
            shown.started("char-gru")
            shown.started("word-gru")
            mark(tmp_path, "word-gru", 150, 300)
            wait_for(lambda: b"150/300" in b"".join(chunks), "word-gru's bar at 150/300")
            shown.finished("char-gru", "trained")
            wait_for(lambda: b"char-gru: written to" in b"".join(chunks), "char-gru written")
    finally:
        stream.close()
        reader.join(10)
        os.close(controller)
    text = b"".join(chunks).decode()
    assert "word-gru" in text and "\r" in text  # the bar, redrawn in place
    assert f"char-gru: written to {tmp_path / 'char-gru'}" in text
    assert "serves it now" in text


def test_a_log_gets_plain_periodic_lines(tmp_path: Path) -> None:
    log = io.StringIO()
    with ZooProgress(tmp_path, ["char-gru", "word-gru", "dates"], log, interval=0.02) as shown:
        shown.started("char-gru")
        shown.started("word-gru")
        mark(tmp_path, "word-gru", 150, 300)
        shown.finished("char-gru", "trained")
        expected = (
            "zoo: training word-gru training, step 150/300 (50%) | written: char-gru"
            " | waiting: dates"
        )
        wait_for(lambda: expected in log.getvalue(), "a plain line")
    lines = log.getvalue()
    assert "\r" not in lines and "\x1b" not in lines
    written = f"char-gru: written to {tmp_path / 'char-gru'}"
    assert any(line.startswith(written) for line in lines.splitlines())
