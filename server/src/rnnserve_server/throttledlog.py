"""Log lines that a flood of calls cannot turn into a flood of lines.

A ``ThrottledLog`` writes at most ``burst`` lines per ``interval_s`` for each kind of
event (a key: a refused authentication's reason, a method and status code); the lines
over that are counted, and the next line of that kind that is written says how many
were left out. Writing a line costs the event loop far more than refusing a call, so a
caller that sends refused calls in a loop must not be able to make the server log each.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from typing import Any


class ThrottledLog:
    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 10,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.burst = burst
        self.interval_s = interval_s
        self._clock = clock
        self._windows: dict[Hashable, list[float]] = {}  # key -> [start, written, left out]

    def log(self, level: int, key: Hashable, message: str, *args: Any, **kwargs: Any) -> None:
        if not self.logger.isEnabledFor(level):
            return
        now = self._clock()
        window = self._windows.get(key)
        if window is None or now - window[0] >= self.interval_s:
            left_out = int(window[2]) if window is not None else 0
            window = self._windows[key] = [now, 0, 0]
            if left_out:
                message += f" ({left_out} more like it in the {self.interval_s:g} s before)"
        if window[1] >= self.burst:
            window[2] += 1
            return
        window[1] += 1
        self.logger.log(level, message, *args, **kwargs)
