"""Rate-limited log lines (throttledlog.py) on a clock the test moves."""

from __future__ import annotations

import logging

import pytest

from rnnserve_server.throttledlog import ThrottledLog


def test_a_burst_per_key_then_a_count_of_those_left_out(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    throttled = ThrottledLog(
        logging.getLogger("quiet"), burst=2, interval_s=10, clock=lambda: now[0]
    )
    with caplog.at_level(logging.WARNING, logger="quiet"):
        for i in range(5):
            throttled.log(logging.WARNING, "a", "event a %d", i)
        throttled.log(logging.WARNING, "b", "event b")  # another key: its own burst
        now[0] = 10.0
        throttled.log(logging.WARNING, "a", "event a %d", 5)
    assert [r.getMessage() for r in caplog.records] == [
        "event a 0",
        "event a 1",
        "event b",
        "event a 5 (3 more like it in the 10 s before)",
    ]
