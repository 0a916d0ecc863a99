"""The step-time breakdown books each second to exactly one phase."""

from __future__ import annotations

import pytest

from lit_search_rl import timing
from lit_search_rl.timing import PhaseTimer


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_nested_phases_are_exclusive_and_add_up(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(timing.time, "perf_counter", clock)
    timer = PhaseTimer()
    with timer("pool"):
        clock.now += 1.0  # pool bookkeeping
        with timer("rollout"):
            clock.now += 5.0
            timer.add("generate", 4.0, within="rollout")  # measured inside the agent loop
        clock.now += 0.5  # pool again
        with timer("reward"):
            clock.now += 0.25
    with timer("pool"):
        clock.now += 0.5
    assert dict(timer.seconds) == {"pool": 2.0, "rollout": 1.0, "generate": 4.0, "reward": 0.25}
    assert sum(timer.seconds.values()) == clock.now
    timer.reset()
    assert not timer.seconds
