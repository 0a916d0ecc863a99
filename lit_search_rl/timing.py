"""Where a training step's time goes: wall-clock seconds per phase, logged as ``time/<phase>``.

Phases may nest (the pool's bookkeeping wraps the rollouts it asks for); a phase's time is
*exclusive*: seconds spent in a nested phase count for the nested one only. So the phases of a
step add up to at most its wall time, and ``time/other`` is the rest.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator


class PhaseTimer:
    """Exclusive wall time per named phase since the last ``reset``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._stack: list[str] = []
        self._since = 0.0  # when the innermost open phase last resumed

    def reset(self) -> None:
        self.seconds = defaultdict(float)
        self._stack = []

    @contextlib.contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        now = time.perf_counter()
        if self._stack:  # pause the enclosing phase
            self.seconds[self._stack[-1]] += now - self._since
        self._stack.append(phase)
        self._since = now
        try:
            yield
        finally:
            now = time.perf_counter()
            self.seconds[self._stack.pop()] += now - self._since
            self._since = now  # the enclosing phase resumes

    def add(self, phase: str, seconds: float, within: str | None = None) -> None:
        """Book ``seconds`` measured elsewhere to ``phase``, taking them from the open phase ``within``."""
        self.seconds[phase] += seconds
        if within is not None:
            self.seconds[within] -= seconds
