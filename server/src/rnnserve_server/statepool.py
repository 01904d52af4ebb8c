"""The hidden states of one model's sessions, ``[L, capacity, H]``, indexed by slot, so
that gathering a batch of sessions is one indexing operation.

The array doubles when it is full, and halves (at least) when the sessions have gone:
once at most a quarter of its slots is in use, the states in the upper slots move down
into free lower ones and the array is replaced by a smaller copy. Each array is a memory
mapping of its own, unmapped as soon as it is freed: its memory goes back to the system
whatever malloc would have done with it. A slot number moves only then, and only while
no run of the step graph is in flight on a worker thread with slot numbers it gathered
(``pin``); the session store applies the moves.

Touched only on the event loop thread; inference threads only ever see copies.
"""

from __future__ import annotations

import mmap

import numpy as np

from rnnserve_server.runtime import FloatArray

MIN_CAPACITY = 64


class StatePool:
    """Hidden states of one model's sessions, grown by doubling, shrunk when mostly free."""

    def __init__(self, layers: int, hidden: int, capacity: int = MIN_CAPACITY) -> None:
        self.states = _mapped_zeros(layers, capacity, hidden)
        # Free slots: those released (taken again first, last in first out) and every
        # slot from ``_fresh`` up, never handed out. No list of a grown pool's new slots:
        # it held an int object per slot (~47 bytes per idle session, measured).
        self._free: list[int] = []
        self._fresh = 0
        self.in_use = 0
        self._pins = 0

    @property
    def capacity(self) -> int:
        return int(self.states.shape[1])

    def allocate(self, initial: FloatArray) -> int:
        if self._free:
            slot = self._free.pop()
        else:
            if self._fresh == self.capacity:
                old = self.capacity
                grown = _mapped_zeros(self.states.shape[0], old * 2, self.states.shape[2])
                grown[:, :old] = self.states
                self.states = grown
            slot = self._fresh
            self._fresh += 1
        self.states[:, slot, :] = initial
        self.in_use += 1
        return slot

    def release(self, slot: int) -> None:
        self._free.append(slot)
        self.in_use -= 1

    def gather(self, slots: list[int]) -> FloatArray:
        """A copy of the states of these slots, [L, B, H]."""
        return self.states[:, slots, :]

    def scatter(self, slots: list[int], states: FloatArray) -> None:
        self.states[:, slots, :] = states

    @property
    def state_bytes(self) -> int:
        return int(self.states.nbytes)

    def pin(self) -> None:
        """Slot numbers are held across a wait (a run on a worker thread): none moves
        until ``unpin``."""
        self._pins += 1

    def unpin(self) -> None:
        self._pins -= 1

    @property
    def shrinkable(self) -> bool:
        """At most a quarter of the slots in use (above the minimum size), none pinned."""
        return not self._pins and self.capacity > MIN_CAPACITY and self.in_use * 4 <= self.capacity

    def shrink(self) -> dict[int, int]:
        """Move the states of the upper slots into free lower ones and keep a copy of
        the lower part only: room for twice the slots in use (at least MIN_CAPACITY).
        Returns the moves, old slot -> new slot, for the caller to apply."""
        if not self.shrinkable:
            return {}
        size = max(MIN_CAPACITY, 1 << (2 * self.in_use - 1).bit_length())
        free = set(self._free)
        used = [slot for slot in range(self._fresh) if slot not in free]
        # Released or never used, highest first: pop() takes the lowest.
        lower_free = [s for s in range(size - 1, -1, -1) if s in free or s >= self._fresh]
        moves = {slot: lower_free.pop() for slot in used if slot >= size}
        if moves:
            self.states[:, list(moves.values()), :] = self.states[:, list(moves), :]
        smaller = _mapped_zeros(self.states.shape[0], size, self.states.shape[2])
        smaller[:] = self.states[:, :size, :]
        self.states = smaller  # the larger array's mapping is unmapped as it is freed
        self._free = lower_free
        self._fresh = size
        return moves


def _mapped_zeros(layers: int, capacity: int, hidden: int) -> FloatArray:
    """A zeroed float32 array [L, capacity, H] in an anonymous memory mapping of its own,
    which goes back to the system as soon as the array is freed. (From malloc, a large
    block freed by a server whose other threads have raised malloc's mmap threshold
    stays in the heap: measured, a pool shrunk from 32 MiB left the RSS as it was.)"""
    size = max(1, layers * capacity * hidden) * 4
    mapping = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
    return np.frombuffer(mapping, dtype=np.float32, count=layers * capacity * hidden).reshape(
        layers, capacity, hidden
    )
