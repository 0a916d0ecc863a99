"""History-aware pool weightings: how a query's past outcomes scale its chance to be drawn again.

A strategy decides which drawn queries stay in the pool and with what weight; a weighting then
multiplies every query's draw weight by a factor computed from its outcome history (the pool's
``set_factors``). It never consumes or revives a query, so it composes with every strategy:
under ``recycle`` it scales the returned zero-variance queries, under ``dapo`` and
``bounded_dapo`` (which consume every drawn query) it shapes the draws of each new epoch.

* ``none``: every factor 1, the strategy alone.
* ``greso``: GRESO's selective rollout (arXiv 2506.02177) as pool weights. A query whose last z
  groups were all correct gets factor ``max(p_easy ** z, 0.01)``, one whose last z groups were all
  wrong ``max(p_hard ** z, 0.01)``, any other 1. After every step a controller moves ``p_easy`` by
  0.01 toward a share of all-correct groups of ``alpha / 3`` among the step's groups and ``p_hard``
  toward an all-wrong share of ``2 * alpha / 3`` (a share above its target lowers the p, so such
  queries are drawn less), clamped to [0.05, 0.95]; both start at 0.5. GRESO skips a prompt with
  probability ``1 - p ** z`` before rolling it out; here the same number lowers its draw weight, and
  the 0.01 floor keeps every query drawable, since zero-variance queries flip back to teaching as
  the policy changes.

New weightings subclass ``Weighting`` and register in ``WEIGHTINGS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lit_search_rl.data.pool import HISTORY_STREAKS, OUTCOMES, Outcome, QueryPool


class Weighting:
    """No history: every factor stays 1."""

    name = "none"

    def update(self, pool: QueryPool, outcomes: Sequence[Outcome]) -> None:
        """After a step whose drawn groups had ``outcomes`` (already reported to ``pool``): set the factors."""

    def metrics(self, pool: QueryPool) -> dict[str, float]:
        """``pool/*`` tags of the weighting's state."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class GRESOWeighting(Weighting):
    """GRESO's streak factors and their controller (see the module docstring).

    Args:
        alpha: the targeted share of zero-variance groups among a step's groups; a third of it all
            correct, two thirds all wrong.
        p_start: both probabilities at the start.
        step: how far the controller moves a probability after each step.
        floor: the smallest factor, so that no query becomes undrawable.
        bounds: the range of both probabilities.
    """

    name = "greso"

    def __init__(self, alpha: float = 0.25, p_start: float = 0.5, step: float = 0.01, floor: float = 0.01,
                 bounds: tuple[float, float] = (0.05, 0.95)) -> None:  # fmt: skip
        if not 0 < alpha <= 1:
            raise ValueError(f"the GRESO target share alpha must be in (0, 1] (got {alpha})")
        self.alpha, self.step, self.floor, self.bounds = alpha, step, floor, bounds
        self.p_easy = self.p_hard = p_start

    def update(self, pool: QueryPool, outcomes: Sequence[Outcome]) -> None:
        if outcomes:
            easy = sum(o == "too_easy" for o in outcomes) / len(outcomes)
            hard = sum(o == "too_hard" for o in outcomes) / len(outcomes)
            self.p_easy = self._toward(self.p_easy, easy, self.alpha / 3)
            self.p_hard = self._toward(self.p_hard, hard, 2 * self.alpha / 3)
        pool.set_factors(self.factors(pool))

    def _toward(self, p: float, share: float, target: float) -> float:
        # Too many such groups: draw them less (lower p); too few: more. Rounded so that p stays on the 0.01 grid.
        if share != target:
            p += self.step if share < target else -self.step
        return round(min(max(p, self.bounds[0]), self.bounds[1]), 10)

    def factors(self, pool: QueryPool) -> np.ndarray:
        """Each query's factor from its streak of zero-variance outcomes (1 without one).

        One row of factors per last outcome, one column per streak length, read with the pool's history code
        in a single gather: a million queries cost one pass. Streaks beyond the code's cap share its last
        column, which changes nothing: at p <= 0.95, ``p ** 127`` is already below the 0.01 floor.
        """
        z = np.arange(HISTORY_STREAKS)
        table = np.ones((len(OUTCOMES) + 1, HISTORY_STREAKS))  # row 0: never drawn
        table[OUTCOMES.index("too_easy") + 1] = np.maximum(self.p_easy**z, self.floor)
        table[OUTCOMES.index("too_hard") + 1] = np.maximum(self.p_hard**z, self.floor)
        return table.ravel()[pool.history]

    def metrics(self, pool: QueryPool) -> dict[str, float]:
        active = pool.weights > 0
        lowered = active & (pool.factors < 1)
        return {
            "pool/greso_p_easy": self.p_easy,
            "pool/greso_p_hard": self.p_hard,
            "pool/lowered_fraction": float(lowered.sum() / max(1, active.sum())),
            "pool/mean_factor": float(pool.factors[active].mean()) if active.any() else 1.0,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"p_easy": self.p_easy, "p_hard": self.p_hard}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:  # a checkpoint of a run without this weighting holds none: start from p_start
            self.p_easy, self.p_hard = float(state["p_easy"]), float(state["p_hard"])


WEIGHTINGS: dict[str, type[Weighting]] = {w.name: w for w in (Weighting, GRESOWeighting)}


def make_weighting(name: str, **options: float) -> Weighting:
    """The weighting registered as ``name``."""
    if name not in WEIGHTINGS:
        raise ValueError(f"unknown pool weighting {name!r}; choose one of {', '.join(sorted(WEIGHTINGS))}")
    return WEIGHTINGS[name](**options)
