"""One sampling step over the pool: draw, roll out, classify, fill the effective batch, report.

``sampling_step`` is the loop every strategy shares; the outcome of each drawn query comes
from a function, so the same code runs with real rollouts (the GRPO module) and with the
pool simulator (no model). Outcomes reach the pool before the next draw. A step that raises
(a reward that fails, an interrupted rollout) is undone: the pool is left as before it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from lit_search_rl.data.pool import Outcome, QueryPool
from lit_search_rl.data.strategies import Strategy


@dataclass
class StepResult:
    """What one step drew and kept.

    Attributes:
        chosen: pool indices of the effective batch (signal groups), in the order they were picked.
        drawn: pool indices of every query rolled out in this step.
        outcomes: outcome of each drawn query, aligned with ``drawn``.
        recycled: how many of ``chosen`` had been drawn earlier in the same epoch (returned to the pool).
        flips: ``recovery`` and ``drift`` counts of this step's reports.
    """

    chosen: list[int] = field(default_factory=list)
    drawn: list[int] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    recycled: int = 0
    flips: dict[str, int] = field(default_factory=lambda: {"recovery": 0, "drift": 0})


def sampling_step(
    pool: QueryPool, strategy: Strategy, outcomes_of: Callable[[np.ndarray], Sequence[Outcome]]
) -> StepResult:
    """Run the strategy's rounds for one optimizer step and report every drawn query to the pool.

    If ``outcomes_of`` raises, every draw and report of the step is undone before the error goes on:
    a query whose group was not scored is never consumed.
    """
    with pool.transaction():
        return _rounds(pool, strategy, outcomes_of)


def _rounds(pool: QueryPool, strategy: Strategy, outcomes_of: Callable[[np.ndarray], Sequence[Outcome]]) -> StepResult:
    result = StepResult()
    for _ in range(strategy.rounds()):
        room = strategy.batch_size - len(result.chosen)
        if room <= 0:
            break
        drawn = pool.draw(strategy.candidates())
        outcomes = list(outcomes_of(drawn))
        picked = strategy.select(outcomes, room)
        used = [False] * len(drawn)
        for i in picked:
            used[i] = True
            result.chosen.append(int(drawn[i]))
            # epoch_draws already counts this draw, so > 1 means it came back to the pool earlier
            # in this epoch (recycled); a new epoch's repeat of a consumed query is not recycling.
            result.recycled += int(pool.epoch_draws[drawn[i]] > 1)
        flips = pool.report(drawn, outcomes, strategy.new_weights(outcomes, used))
        for kind, n in flips.items():
            result.flips[kind] += n
        result.drawn += drawn.tolist()
        result.outcomes += outcomes
    return result
