"""The per-caller token bucket and call count (limits.py), on a clock the test moves."""

from __future__ import annotations

import pytest

from rnnserve_server.errors import ResourceExhausted
from rnnserve_server.limits import SWEEP_S, Limits


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_bucket_refills_at_its_rate_up_to_its_size() -> None:
    clock = Clock()
    budget = Limits(max_calls=5, tokens_per_s=10, burst=30, clock=clock).admit("ip:1")
    budget.spend(25)
    with pytest.raises(ResourceExhausted) as raised:
        budget.spend(10)  # 5 left: 5 short, half a second of refill
    assert raised.value.retry_after_s == pytest.approx(0.5)
    assert "5 left of caller_token_burst = 30" in raised.value.message
    clock.now += 0.5
    budget.spend(10)  # exactly what the refusal said
    clock.now += 1000
    assert budget.spend_up_to(50) == 30  # never more than the bucket's size
    assert budget.spend_up_to(3) == 0
    budget.refund(4)  # tokens taken for work not done come back
    assert budget.spend_up_to(10) == 4


def test_calls_in_flight_are_counted_per_caller() -> None:
    limits = Limits(max_calls=2, tokens_per_s=10, burst=30, clock=Clock())
    first, second = limits.admit("user:a"), limits.admit("user:a")
    assert first is second
    with pytest.raises(ResourceExhausted, match="max_calls_per_caller"):
        limits.admit("user:a")
    limits.admit("user:b")  # another caller
    limits.release(first)
    limits.admit("user:a")


def test_quiet_callers_are_forgotten_and_come_back_with_a_full_bucket() -> None:
    clock = Clock()
    limits = Limits(max_calls=2, tokens_per_s=10, burst=30, clock=clock)
    budget = limits.admit("ip:a")
    budget.spend(30)
    limits.release(budget)
    busy = limits.admit("ip:b")  # still in flight: kept
    clock.now += SWEEP_S + 1  # refilled by now
    limits.admit("ip:c")  # a sweep runs on admission
    assert len(limits) == 2  # ip:a is gone
    assert limits.admit("ip:b") is busy
    assert limits.admit("ip:a").spend_up_to(100) == 30


def test_no_rate_means_no_bucket() -> None:
    budget = Limits(max_calls=1, tokens_per_s=0, burst=0, clock=Clock()).admit("ip:a")
    budget.spend(10**9)
    assert budget.spend_up_to(10**9) == 10**9
