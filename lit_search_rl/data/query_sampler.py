"""The one seam between GRPO and its training questions: a ``QuerySampler`` draws every step.

A step runs the strategy's rounds over the pool: draw candidates, give each its number of
rollouts (the allocator's group sizes, where one is set), have the caller roll out and score
each round's questions (``outcomes_of``: each group's outcome, or its rewards, which also tell
the pool its share of rewarded trajectories), pick the signal groups of the effective batch,
report every drawn query to the pool. The caller never reads the pool; it gets a ``StepResult``
naming what was drawn and kept, and the pool's figures as metrics. The same loop runs with real
rollouts (the GRPO module) and with the pool simulator (``draw_step`` on a bare pool, no model).
Outcomes reach the pool before the next draw. A step that raises (a reward that fails, an
interrupted rollout) is undone: the pool is left as before it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from lit_search_rl.data.allocation import Allocator, size_metrics
from lit_search_rl.data.pool import Outcome, QueryPool, classify_group
from lit_search_rl.data.qa import QARecord
from lit_search_rl.data.strategies import Strategy
from lit_search_rl.data.weighting import Weighting
from lit_search_rl.distributed import check_identical, state_digest


@dataclass
class StepResult:
    """What one step drew and kept.

    Attributes:
        chosen: pool indices of the effective batch (signal groups), in the order they were picked.
        picked: positions of the chosen queries in ``drawn`` (the step's draw order), aligned with ``chosen``.
        drawn: pool indices of every query rolled out in this step.
        outcomes: outcome of each drawn query, aligned with ``drawn``.
        sizes: rollouts of each drawn query, aligned with ``drawn`` (empty when every query got K).
        recycled: how many of ``chosen`` had been drawn earlier in the same epoch (returned to the pool).
        flips: ``recovery`` and ``drift`` counts of this step's reports.
    """

    chosen: list[int] = field(default_factory=list)
    picked: list[int] = field(default_factory=list)
    drawn: list[int] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    recycled: int = 0
    flips: dict[str, int] = field(default_factory=lambda: {"recovery": 0, "drift": 0})


Scored = Outcome | Sequence[float]
"""What the caller returns for a group: its outcome, or its rewards (classified here)."""


def draw_step(
    pool: QueryPool,
    strategy: Strategy,
    outcomes_of: Callable[..., Sequence[Scored]],
    allocator: Allocator | None = None,
) -> StepResult:
    """Run the strategy's rounds for one optimizer step and report every drawn query to the pool.

    ``outcomes_of(drawn)`` rolls out and scores a round's queries; with an ``allocator`` that varies the group
    sizes it is called as ``outcomes_of(drawn, sizes)``, ``sizes`` the rollouts of each. If it raises, every
    draw and report of the step is undone before the error goes on: a query whose group was not scored is
    never consumed.
    """
    with pool.transaction():
        return _rounds(pool, strategy, outcomes_of, allocator)


def _read(scored: Sequence[Scored]) -> tuple[list[Outcome], list[float]]:
    """Outcomes and shares of rewarded trajectories (NaN where only the outcome was given)."""
    outcomes, success = [], []
    for group in scored:
        if isinstance(group, str):
            outcomes.append(group)
            success.append(float("nan"))
        else:
            outcomes.append(classify_group(group))
            success.append(sum(r > 0 for r in group) / len(group))
    return outcomes, success


def _rounds(pool: QueryPool, strategy: Strategy, outcomes_of: Callable[..., Sequence[Scored]],
            allocator: Allocator | None) -> StepResult:  # fmt: skip
    result = StepResult()
    for _ in range(strategy.rounds()):
        room = strategy.batch_size - len(result.chosen)
        if room <= 0:
            break
        drawn = pool.draw(strategy.candidates())
        sizes = allocator.sizes(pool, drawn.tolist()) if allocator is not None else None
        outcomes, success = _read(outcomes_of(drawn) if sizes is None else outcomes_of(drawn, sizes))
        picked = strategy.select(outcomes, room)
        used = [False] * len(drawn)
        for i in picked:
            used[i] = True
            result.chosen.append(int(drawn[i]))
            result.picked.append(len(result.drawn) + i)
            # epoch_draws already counts this draw, so > 1 means it came back to the pool earlier
            # in this epoch (recycled); a new epoch's repeat of a consumed query is not recycling.
            result.recycled += int(pool.epoch_draws[drawn[i]] > 1)
        flips = pool.report(drawn, outcomes, strategy.new_weights(outcomes, used), success)
        for kind, n in flips.items():
            result.flips[kind] += n
        result.drawn += drawn.tolist()
        result.outcomes += outcomes
        result.sizes += sizes or []
    return result


class QuerySampler:
    """Each step's training questions: a strategy drawing from a pool of question records.

    Args:
        records: the training questions, in the pool's order.
        strategy: which questions are drawn, which groups train, what happens to the rest.
        pool: the weighted pool over ``records``.
        check_every: steps between checks that every rank's pool is still identical (0: never).
        weighting: how the pool's history scales draw weights after each step (none: the strategy alone).
        allocator: rollouts per drawn question (none, or the fixed one: the caller's own group size, and
            ``outcomes_of`` gets the questions alone).
    """

    def __init__(self, records: Sequence[QARecord], strategy: Strategy, pool: QueryPool, check_every: int = 1,
                 weighting: Weighting | None = None, allocator: Allocator | None = None) -> None:  # fmt: skip
        if len(pool) != len(records):
            raise ValueError(f"the pool holds {len(pool)} queries but there are {len(records)} records")
        self.records, self.strategy, self.pool, self.check_every = list(records), strategy, pool, check_every
        self.weighting = weighting or Weighting()
        self.allocator = allocator
        self.steps = 0

    def step(self, outcomes_of: Callable[..., Sequence[Scored]]) -> StepResult:
        """Draw, have ``outcomes_of`` roll out and score each round's questions, pick, report.

        ``outcomes_of(records)`` returns each group's outcome or rewards; with an allocator that varies the group
        sizes it is called as ``outcomes_of(records, sizes)``.

        With several ranks, ``outcomes_of`` must return every drawn question's outcome on every
        rank (the GRPO module gathers them), so the pools stay identical; checked every
        ``check_every`` steps. Raises ``PoolExhausted`` under the ``stop`` policy.
        """
        result = draw_step(self.pool, self.strategy,
                           lambda idx, *sizes: outcomes_of([self.records[i] for i in idx], *sizes),
                           self.allocator)  # fmt: skip
        self.weighting.update(self.pool, result.outcomes)
        self.steps += 1
        if self.check_every and self.steps % self.check_every == 0:
            check_identical("the query pool", self.digest())
        return result

    def digest(self) -> str:
        """A hash of the pool's mutable state (weights, history, counters, generator)."""
        return state_digest({k: v for k, v in self.pool.state_dict().items() if k != "ids"})

    def metrics(self, result: StepResult) -> dict[str, float]:
        """The pool's ``pool/*`` tags and the step's recycling ``train/*`` tags."""
        chosen, drawn = max(1, len(result.chosen)), max(1, len(result.drawn))
        return {
            "pool/active": float(self.pool.active),
            "pool/consumed": float(self.pool.consumed),
            "train/recycled_fraction": result.recycled / chosen,
            "train/recovery_fraction": result.flips["recovery"] / drawn,
            "train/drift_fraction": result.flips["drift"] / drawn,
            **self.weighting.metrics(self.pool),
            **(size_metrics(result.sizes) if result.sizes else {}),
        }
