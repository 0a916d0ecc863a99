"""Query strategies: which questions are drawn, which groups train, and what happens to the rest.

Every strategy works on the same ``QueryPool`` in rounds. A round draws candidates; their
groups are rolled out and classified; ``select`` picks signal groups for the effective batch
(at most B in all); ``new_weights`` sets each drawn query's weight (0 consumes it).

* ``grpo``: draw B per step, every drawn query consumed: an epoch pass over the data.
* ``dapo``: dynamic sampling: draw B per round until B signal groups are found or ``max_rounds``
  rounds are spent; every drawn query consumed.
* ``bounded_dapo``: draw k*B once, use at most B signal groups; every drawn query consumed.
* ``recycle``: draw k*B once, use at most B signal groups; only the used ones are consumed.
  Zero-variance and unused signal queries go back with ``recycled_weight`` (1: hard recycling,
  as likely to be drawn as a fresh query; below 1: soft recycling, 0.1 in the paper).

When more than B signal groups are available, the first ones in draw order fill the effective
batch. Draw order is itself a weighted random order, so this keeps the choice unbiased.
New strategies subclass ``Strategy`` and register in ``STRATEGIES``.
"""

from __future__ import annotations

from collections.abc import Sequence

from lit_search_rl.data.pool import Outcome


class Strategy:
    """A query strategy for batch size B and oversampling factor k.

    Args:
        batch_size: signal groups per update (B).
        oversample: candidates per round as a multiple of B (k), where the strategy oversamples.
        max_rounds: rounds per step (DAPO's cap on generation rounds).
        recycled_weight: weight of drawn queries that were not used (recycling only).
    """

    name = ""
    options: tuple[str, ...] = ("oversample",)
    """The settings besides B this strategy reads; setting another one is an error, not silently ignored."""

    def __init__(self, batch_size: int, oversample: int = 1, max_rounds: int = 1, recycled_weight: float = 1.0) -> None:
        if batch_size < 1 or oversample < 1 or max_rounds < 1:
            raise ValueError("batch_size, oversample and max_rounds must be at least 1")
        if not 0 <= recycled_weight <= 1:
            raise ValueError(f"recycled_weight must be in [0, 1] (got {recycled_weight})")
        self.batch_size, self.oversample = batch_size, oversample
        self.max_rounds, self.recycled_weight = max_rounds, recycled_weight

    def candidates(self) -> int:
        """Queries to draw in one round."""
        return self.batch_size * self.oversample

    def rounds(self) -> int:
        """Most rounds in one step."""
        return 1

    def select(self, outcomes: Sequence[Outcome], room: int) -> list[int]:
        """Positions of the signal groups (in draw order) that join the effective batch; at most ``room``."""
        return [i for i, o in enumerate(outcomes) if o == "signal"][:room]

    def new_weights(self, outcomes: Sequence[Outcome], used: Sequence[bool]) -> list[float]:
        """Weight of each drawn query after the step: every drawn query is consumed by default."""
        return [0.0] * len(outcomes)


class GRPOStrategy(Strategy):
    name = "grpo"
    options = ()

    def candidates(self) -> int:
        return self.batch_size


class DAPOStrategy(Strategy):
    name = "dapo"
    options = ("max_rounds",)

    def candidates(self) -> int:
        return self.batch_size

    def rounds(self) -> int:
        return self.max_rounds


class BoundedDAPOStrategy(Strategy):
    name = "bounded_dapo"


class RecycleStrategy(Strategy):
    name = "recycle"
    options = ("oversample", "recycled_weight")

    def new_weights(self, outcomes: Sequence[Outcome], used: Sequence[bool]) -> list[float]:
        return [0.0 if u else self.recycled_weight for u in used]


STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s for s in (GRPOStrategy, DAPOStrategy, BoundedDAPOStrategy, RecycleStrategy)
}


def make_strategy(name: str, batch_size: int, **options: float | int | None) -> Strategy:
    """The strategy registered as ``name``; unset (None) options take their defaults.

    Options the strategy does not read are accepted here (the pool simulator passes one set to all);
    ``check_options`` refuses them where a user set them.
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name](batch_size, **{k: v for k, v in options.items() if v is not None})


def check_options(name: str, prefix: str = "", **options: float | int | None) -> None:
    """Refuse an option that strategy ``name`` would silently ignore: set (not None, ``oversample`` above 1)
    although the strategy does not read it. Errors name the option as ``prefix + option``."""
    strategy = STRATEGIES.get(name)
    if strategy is None:
        return
    for option, value in options.items():
        if option in strategy.options or value is None or (option == "oversample" and value == 1):
            continue
        readers = [n for n, s in STRATEGIES.items() if option in s.options]
        raise ValueError(f"{prefix}{option} is {value} but strategy {name} does not use it (only "
                         f"{' and '.join(readers)} read it): leave it unset")  # fmt: skip
