"""Training-time variants of full names for the locale classifier (``Classifier``).

A GRU that reads "First Last" learns the training names' parts by heart: its validation
accuracy matched naive Bayes' while its test accuracy, on names whose parts it never saw,
fell further behind (docs/models.md). Two variants make it judge spellings instead:

* **part dropout**: a share of the training names is cut to one of its parts, the first
  word or the rest, so each part has to show its locale alone;
* **part splice**: each part is, with a given chance, a prefix of itself joined to a
  suffix of another part of the same locale in the same position (a first name with a
  first name, a surname with a surname), drawn from the training split only: new
  spellings made of the locale's own pieces, so the network learns the pieces.

The label never changes; validation and test names are never touched. Every draw comes
from one ``random.Random(seed)``, so a run is reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace

from rnnserve_train.corpora import Example


class PartAugmenter:
    """``augment(example)``: the example with its name varied as described above."""

    def __init__(
        self, train: Sequence[Example], part_dropout: float, part_splice: float, seed: int
    ) -> None:
        self.part_dropout = part_dropout
        self.part_splice = part_splice
        self.rng = random.Random(seed)
        self.pools: dict[tuple[str, int], list[str]] = {}
        for example in train:
            for position, part in enumerate(parts_of(example.source)):
                if len(part) >= 2:
                    self.pools.setdefault((example.target, position), []).append(part)

    def __call__(self, example: Example) -> Example:
        parts = parts_of(example.source)
        if len(parts) < 2:
            return example
        if self.part_splice:
            parts = [
                self.splice(part, example.target, position)
                if self.rng.random() < self.part_splice
                else part
                for position, part in enumerate(parts)
            ]
        if self.rng.random() < self.part_dropout:
            parts = [self.rng.choice(parts)]
        return replace(example, source=" ".join(parts))

    def splice(self, part: str, locale: str, position: int) -> str:
        """A prefix of ``part`` (at least one character, not all) and a suffix of another
        training part of ``locale`` in ``position`` (the same bounds)."""
        pool = self.pools.get((locale, position))
        if not pool or len(part) < 2:
            return part
        other = self.rng.choice(pool)
        cut, start = self.rng.randint(1, len(part) - 1), self.rng.randint(1, len(other) - 1)
        return part[:cut] + other[start:]


def parts_of(name: str) -> list[str]:
    """A full name's first word and the rest ("Anna de la Cruz" -> "Anna", "de la Cruz");
    one part for a single word."""
    return name.split(" ", 1)
