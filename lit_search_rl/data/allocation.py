"""Rollout allocation: how many trajectories each drawn query gets (its group size).

* ``fixed``: K for every query, GRPO's groups.
* ``knapsack``: per-query budgets (Knapsack RL, arXiv 2509.25849). Each drawn query has an estimated
  success rate p from its history: the share of rewarded trajectories in its last group (or, where
  only the outcome is known, 1 for all correct, 0 for all wrong, 0.5 for a signal group), none for a
  query never rolled out. Given the round's total of R trajectories (K per candidate by default, so
  the same budget as ``fixed``): a query never rolled out gets K; p of 0 or 1 gets the floor (2);
  the others start at the floor and each further trajectory goes to the query where it adds most
  to ``V(N, p) = (1 - p**N - (1 - p)**N) * p * (1 - p)**2`` (the chance that N rollouts show both
  outcomes, times the gradient a success contributes), up to a cap (128) each. Budget that nobody
  can take (every query capped) goes evenly to the p = 0 queries, else evenly to all: the
  trajectories always add up to R exactly. V is concave in N, so handing out one trajectory at a
  time to the best marginal gain is the optimum of the knapsack.

New allocators subclass ``Allocator`` and register in ``ALLOCATORS``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

import numpy as np

from lit_search_rl.data.pool import OUTCOMES, QueryPool

_ESTIMATE = {OUTCOMES.index("too_easy"): 1.0, OUTCOMES.index("too_hard"): 0.0, OUTCOMES.index("signal"): 0.5}


class Allocator:
    """Every drawn query gets the caller's own group size K (``sizes`` is None: nothing to pass on)."""

    name = "fixed"

    def __init__(self, group_size: int, budget: int | None = None) -> None:
        if group_size < 2:
            raise ValueError(f"a group needs at least 2 trajectories (got group_size {group_size})")
        if budget is not None and budget < 1:
            raise ValueError(f"the rollout budget of a round must be at least 1 (got {budget})")
        self.group_size, self.budget = group_size, budget

    def sizes(self, pool: QueryPool, drawn: Sequence[int]) -> list[int] | None:
        """Trajectories for each drawn query, in draw order; None when every query gets K."""
        return None


def success_estimates(pool: QueryPool, drawn: Sequence[int]) -> list[float | None]:
    """Each drawn query's estimated success rate from its last group; None if it was never rolled out."""
    estimates: list[float | None] = []
    for i in drawn:
        last = int(pool.last_outcome[i])
        if last < 0:
            estimates.append(None)
        elif math.isfinite(pool.success[i]):
            estimates.append(float(pool.success[i]))
        else:
            estimates.append(_ESTIMATE[last])
    return estimates


def value(n: int, p: float) -> float:
    """Knapsack RL's value of ``n`` rollouts of a query with success rate ``p``."""
    return (1.0 - p**n - (1.0 - p) ** n) * p * (1.0 - p) ** 2


def knapsack_sizes(estimates: Sequence[float | None], total: int, group_size: int, floor: int = 2,
                   cap: int = 128) -> list[int]:  # fmt: skip
    """Trajectories per query (see the module docstring); they sum to ``total`` exactly.

    Raises ``ValueError`` when ``total`` cannot give every query its minimum (K for a query never
    rolled out, ``floor`` for the others).
    """
    sizes = [group_size if p is None else floor for p in estimates]
    left = total - sum(sizes)
    if left < 0:
        raise ValueError(f"a rollout budget of {total} cannot give {len(sizes)} queries their minimum "
                         f"({sum(sizes)} trajectories)")  # fmt: skip
    open_ = [i for i, p in enumerate(estimates) if p is not None and 0.0 < p < 1.0]
    # A max-heap of marginal gains; ties go to the earlier query in draw order (deterministic).
    heap = [(-(value(floor + 1, estimates[i]) - value(floor, estimates[i])), i) for i in open_]
    heapq.heapify(heap)
    while left > 0 and heap:
        _, i = heapq.heappop(heap)
        sizes[i] += 1
        left -= 1
        if sizes[i] < cap:
            p, n = estimates[i], sizes[i]
            heapq.heappush(heap, (-(value(n + 1, p) - value(n, p)), i))
    if left > 0:
        zeros = [i for i, p in enumerate(estimates) if p == 0.0] or list(range(len(sizes)))
        share, extra = divmod(left, len(zeros))
        for rank, i in enumerate(zeros):
            sizes[i] += share + (rank < extra)
    return sizes


class KnapsackAllocator(Allocator):
    """Knapsack RL's per-query budgets (see the module docstring).

    Args:
        group_size: K, what a query never rolled out gets, and (times the candidates) the default budget.
        budget: trajectories of one round; unset: K per candidate.
        floor: what a query gets at least.
        cap: what a query gets at most, unless the budget has nowhere else to go.
    """

    name = "knapsack"

    def __init__(self, group_size: int, budget: int | None = None, floor: int = 2, cap: int = 128) -> None:
        super().__init__(group_size, budget)
        self.floor, self.cap = floor, cap

    def sizes(self, pool: QueryPool, drawn: Sequence[int]) -> list[int]:
        total = self.budget if self.budget is not None else self.group_size * len(drawn)
        try:
            return knapsack_sizes(success_estimates(pool, drawn), total, self.group_size, self.floor, self.cap)
        except ValueError as e:  # only a set budget can be too small: K per candidate always covers the minimum
            raise ValueError(f"data.rollout_budget: {e}") from None


ALLOCATORS: dict[str, type[Allocator]] = {a.name: a for a in (Allocator, KnapsackAllocator)}


def make_allocator(name: str, group_size: int, budget: int | None = None) -> Allocator:
    """The allocator registered as ``name``."""
    if name not in ALLOCATORS:
        raise ValueError(f"unknown rollout allocator {name!r}; choose one of {', '.join(sorted(ALLOCATORS))}")
    return ALLOCATORS[name](group_size, budget)


def size_metrics(sizes: Sequence[int]) -> dict[str, float]:
    """``train/rollouts_per_query_*`` of a step's groups."""
    array = np.asarray(sizes, dtype=float) if sizes else np.zeros(1)
    return {"train/rollouts_per_query_min": float(array.min()), "train/rollouts_per_query_max": float(array.max()),
            "train/rollouts_per_query_sd": float(array.std())}  # fmt: skip
