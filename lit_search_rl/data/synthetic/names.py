"""Pronounceable fictional names built from syllables.

Every word the generator hands out is unique across the whole world, so a name never
appears inside another entity's name and no pretrained model can know a fact about it.
"""

from __future__ import annotations

import random

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "tr", "th"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ei", "ou"]
_CODAS = ["", "", "", "n", "r", "l", "s", "m", "k"]


class NameFactory:
    """Draws capitalised words of 2-3 syllables that have never been drawn before.

    Args:
        rng: the random source; the factory is deterministic given its state.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._used: set[str] = set()

    def word(self, min_syllables: int = 2, max_syllables: int = 3) -> str:
        """A new capitalised word, unique across everything this factory produced."""
        for _ in range(10_000):
            n = self._rng.randint(min_syllables, max_syllables)
            parts = [self._rng.choice(_ONSETS) + self._rng.choice(_VOWELS) for _ in range(n)]
            parts[-1] += self._rng.choice(_CODAS)
            word = "".join(parts).capitalize()
            if word not in self._used:
                self._used.add(word)
                return word
        raise RuntimeError("ran out of distinct syllable names; the world is too large for the syllable inventory")
