"""The state pool grows by doubling and gives memory back when mostly free."""

from __future__ import annotations

import numpy as np

from rnnserve_server.statepool import MIN_CAPACITY, StatePool


def filled(pool: StatePool, count: int) -> list[int]:
    """``count`` slots, each holding its own number in every entry of its state."""
    return [pool.allocate(np.full((2, 3), float(i), np.float32)) for i in range(count)]


def test_a_mostly_free_pool_moves_its_states_down_and_shrinks() -> None:
    pool = StatePool(2, 3)
    slots = filled(pool, 1000)
    assert pool.capacity == 1024
    keep = {slot: i for i, slot in enumerate(slots) if i % 100 == 7}  # 10 spread out
    for slot in slots:
        if slot not in keep:
            pool.release(slot)
    assert pool.shrinkable
    moves = pool.shrink()
    assert pool.capacity == MIN_CAPACITY and pool.in_use == 10
    assert pool.state_bytes == 2 * MIN_CAPACITY * 3 * 4
    where = {moves.get(slot, slot): value for slot, value in keep.items()}
    assert max(where) < MIN_CAPACITY and len(where) == 10
    for slot, value in where.items():
        assert (pool.gather([slot]) == value).all()  # each state moved with its session
    more = filled(pool, MIN_CAPACITY - 10)  # the free slots, lowest first
    assert sorted(more + list(where)) == list(range(MIN_CAPACITY))


def test_a_shrink_waits_for_pinned_slots_and_keeps_room() -> None:
    pool = StatePool(2, 3)
    slots = filled(pool, 512)
    for slot in slots[:312]:
        pool.release(slot)  # 200 in use of 512: over a quarter
    assert not pool.shrinkable and pool.shrink() == {}
    for slot in slots[312:440]:
        pool.release(slot)  # 72 of 512
    pool.pin()  # a run on a worker thread holds slot numbers
    assert pool.shrink() == {} and pool.capacity == 512
    pool.unpin()
    moves = pool.shrink()
    assert pool.capacity == 256  # twice the slots in use, a power of two
    assert set(moves) == set(slots[440:]) - set(range(256))
