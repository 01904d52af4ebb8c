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


def test_random_allocations_releases_and_shrinks_keep_every_state_with_its_owner() -> None:
    """A session's slot is never handed to another while it holds it, through growth
    (slots never used are handed out only when none released is free) and shrinks."""
    rng = np.random.default_rng(16)
    pool = StatePool(1, 2)
    owners: dict[int, float] = {}  # slot -> the value its owner wrote
    for step in range(6000):
        if owners and rng.random() < (0.3 if step < 3000 else 0.7):
            slot = list(owners)[rng.integers(len(owners))]
            pool.release(slot)
            del owners[slot]
        else:
            value = float(step)
            slot = pool.allocate(np.full((1, 2), value, np.float32))
            assert slot not in owners and 0 <= slot < pool.capacity
            owners[slot] = value
        if pool.shrinkable and rng.random() < 0.05:
            moves = pool.shrink()
            owners = {moves.get(slot, slot): value for slot, value in owners.items()}
        assert pool.in_use == len(owners)
        if step % 100 == 0 or step == 5999:
            slots = list(owners)
            assert (pool.gather(slots)[0, :, 0] == [owners[s] for s in slots]).all()
    released = max(owners)
    pool.release(released)
    assert pool.allocate(np.zeros((1, 2), np.float32)) == released  # a released one first
