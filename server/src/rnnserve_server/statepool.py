"""The hidden states of one model's sessions in one array, indexed by slot.

``[L, capacity, H]``, preallocated and grown by doubling, so that gathering a batch of
sessions is one indexing operation. The session store (sessions.py) hands out and takes
back the slots; the batcher gathers and scatters them.
"""

from __future__ import annotations

import numpy as np

from rnnserve_server.runtime import FloatArray


class StatePool:
    """Hidden states of one model's sessions, ``[L, capacity, H]``, grown by doubling."""

    def __init__(self, layers: int, hidden: int, capacity: int = 64) -> None:
        self.states: FloatArray = np.zeros((layers, capacity, hidden), dtype=np.float32)
        self._free = list(range(capacity - 1, -1, -1))
        self.in_use = 0

    @property
    def capacity(self) -> int:
        return int(self.states.shape[1])

    def allocate(self, initial: FloatArray) -> int:
        if not self._free:
            old = self.capacity
            grown = np.zeros((self.states.shape[0], old * 2, self.states.shape[2]), np.float32)
            grown[:, :old] = self.states
            self.states = grown
            self._free = list(range(old * 2 - 1, old - 1, -1))
        slot = self._free.pop()
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
