"""Per-caller budgets on this replica: calls in flight and tokens per second, so that no
caller can take the whole server.

A caller is whoever owns sessions (``rpc.caller_of``): the token's name with
authentication, else the peer's IP address. The gRPC fronts admit every call through
``Limits.admit``, which counts it against ``max_calls_per_caller`` until it ends, and make
the caller's budget the current one for the call (``CURRENT``). The core takes every
token a call feeds or generates from the current budget before it is fed (``current()``):
a bucket of ``caller_token_burst`` tokens, refilled at ``caller_tokens_per_s``. A
Generate takes its ``max_tokens`` at the start and gets back those it did not produce.
(Open sessions per caller are the session store's limit, ``max_sessions_per_caller``.)

A refusal is RESOURCE_EXHAUSTED naming the setting; where a delay is known (the time the
bucket needs to hold the tokens) it carries ``retry_after_s``, which the fronts send as
gRPC's retry pushback.
"""

from __future__ import annotations

import contextvars
import math
import time
from collections.abc import Callable

from rnnserve_server.errors import ResourceExhausted

SWEEP_S = 10.0  # how often the budgets of callers who went quiet are dropped


class Limits:
    """The settings and every caller's budget (event loop thread only)."""

    def __init__(
        self,
        *,
        max_calls: int,
        tokens_per_s: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_calls = max_calls
        self.rate = tokens_per_s
        self.burst = burst
        self.clock = clock
        self._budgets: dict[str, Budget] = {}
        self._swept = clock()

    def __len__(self) -> int:
        return len(self._budgets)

    def admit(self, caller: str) -> Budget:
        """The caller's budget with one more call in flight (``release`` it when the call
        ends); RESOURCE_EXHAUSTED if the caller has max_calls_per_caller in flight."""
        now = self.clock()
        if now - self._swept > SWEEP_S:
            self._sweep(now)
        budget = self._budgets.get(caller)
        if budget is None:
            budget = self._budgets[caller] = Budget(self, now)
        if budget.calls >= self.max_calls:
            raise ResourceExhausted(
                f"calls in flight of this caller = {budget.calls + 1} exceeds the server's "
                f"limit of {self.max_calls} (max_calls_per_caller); retry once one of them "
                "has ended"
            )
        budget.calls += 1
        return budget

    def release(self, budget: Budget) -> None:
        budget.calls -= 1

    def _sweep(self, now: float) -> None:
        """Forget callers with no call in flight whose bucket has refilled: a new budget
        would be the same."""
        self._swept = now
        quiet = [c for c, b in self._budgets.items() if not b.calls and b.refilled(now)]
        for caller in quiet:
            del self._budgets[caller]


class Budget:
    """One caller's calls in flight and its token bucket."""

    __slots__ = ("_at", "_limits", "_tokens", "calls")

    def __init__(self, limits: Limits, now: float) -> None:
        self._limits = limits
        self._tokens = float(limits.burst)
        self._at = now
        self.calls = 0

    def _left(self) -> float:
        """The tokens in the bucket now (refilled for the time since the last look)."""
        limits = self._limits
        now = limits.clock()
        self._tokens = min(limits.burst, self._tokens + (now - self._at) * limits.rate)
        self._at = now
        return self._tokens

    def refilled(self, now: float) -> bool:
        limits = self._limits
        return self._tokens + (now - self._at) * limits.rate >= limits.burst

    def spend(self, tokens: int) -> None:
        """Take ``tokens``, or take none and refuse: RESOURCE_EXHAUSTED saying when the
        bucket will hold them."""
        if not self._limits.rate:
            return
        left = self._left()
        if tokens > left:
            raise self._refusal(tokens, left)
        self._tokens = left - tokens

    def spend_up_to(self, tokens: int) -> int:
        """Take as many of ``tokens`` as the bucket holds (whole ones); how many."""
        if not self._limits.rate:
            return tokens
        taken = min(tokens, int(self._left()))
        self._tokens -= taken
        return taken

    def refund(self, tokens: int) -> None:
        """Give back tokens taken for work that was not done."""
        self._tokens = min(self._limits.burst, self._tokens + tokens)

    def refusal(self, tokens: int) -> ResourceExhausted:
        """The error for ``tokens`` more than the bucket holds now."""
        return self._refusal(tokens, self._left())

    def _refusal(self, tokens: int, left: float) -> ResourceExhausted:
        limits = self._limits
        wait = (tokens - left) / limits.rate
        return ResourceExhausted(
            f"tokens = {tokens} exceeds what this caller may use now: {int(left)} left of "
            f"caller_token_burst = {limits.burst}, refilled at caller_tokens_per_s = "
            f"{limits.rate:g}; retry in {math.ceil(wait * 1000)} ms",
            retry_after_s=wait,
        )


UNLIMITED = Budget(Limits(max_calls=1, tokens_per_s=0, burst=0), 0.0)

# The budget of the call being served: set by the front for each call (a task's context,
# inherited by the tasks a call starts); UNLIMITED for work no front admitted.
CURRENT: contextvars.ContextVar[Budget] = contextvars.ContextVar(
    "rnnserve_budget", default=UNLIMITED
)


def current() -> Budget:
    """The budget the running call's tokens are taken from."""
    return CURRENT.get()
