"""The query pool: a mutable, weighted set of training questions (arXiv 2606.10709, Q(t) = {(q_i, w_i)}).

All weights start at 1. A draw takes queries in proportion to weight times a per-query factor
(1 unless a history-aware weighting sets the factors, ``set_factors``), without replacement
within the draw. After a step the query strategy reports what each drawn query's group did
(``signal``, ``too_easy``, ``too_hard``) and sets its new weight: 0 consumes it, anything
above 0 keeps it active. Every query is always in exactly one state, active (weight > 0) or
consumed, and the state is one ``state_dict``, so a restored pool draws exactly as the
original would have. Draws and reports inside ``transaction()`` are undone when it raises, so a
step whose groups could not be scored consumes nothing and leaves no trace.

Usable on its own, with no model: the pool simulator and most tests drive it directly. Arrays
are numpy, so a draw and report on a million queries costs milliseconds.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np

Outcome = Literal["too_hard", "signal", "too_easy"]
OUTCOMES: tuple[Outcome, ...] = ("too_hard", "signal", "too_easy")
_CODE = {name: code for code, name in enumerate(OUTCOMES)}
NEVER = -1
HISTORY_STREAKS = 128
"""Streak lengths a query's history code tells apart; longer streaks share the last one."""


class _Fenwick:
    """Prefix sums of weights with O(log n) updates and weighted search (a binary indexed tree)."""

    def __init__(self, weights: np.ndarray) -> None:
        self.n = len(weights)
        index = np.arange(1, self.n + 1)
        self._starts = index - (index & -index)  # where each node's range begins, in prefix-sum positions
        self._prefix = np.zeros(self.n + 1)
        self.rebuild(weights)

    def rebuild(self, weights: np.ndarray) -> None:
        # tree[i] holds the sum of weights[i - lowbit(i + 1) + 1 .. i]; built from prefix sums at once.
        np.cumsum(weights, dtype=np.float64, out=self._prefix[1:])
        self.tree = self._prefix[1:] - self._prefix[self._starts]
        self.total = float(self._prefix[-1])
        self.top = 1 << (self.n.bit_length() - 1) if self.n else 0

    def add(self, i: int, delta: float) -> None:
        self.total += delta
        i += 1
        while i <= self.n:
            self.tree[i - 1] += delta
            i += i & -i

    def find(self, u: float) -> int:
        """The smallest index whose prefix sum exceeds ``u``."""
        pos, step = 0, self.top
        while step:
            nxt = pos + step
            if nxt <= self.n and self.tree[nxt - 1] <= u:
                pos = nxt
                u -= self.tree[nxt - 1]
            step >>= 1
        return min(pos, self.n - 1)


class PoolExhausted(RuntimeError):
    """Fewer active queries than a draw needs, under the ``stop`` exhaustion policy."""


def classify_group(rewards: Sequence[float]) -> Outcome:
    """A group's outcome: signal when its rewards differ, else too easy (all rewarded) or too hard (none).

    Rewards must be finite: a NaN compares false with everything, so a group holding one would be
    classified by where the NaN stands (the GRPO module turns them into an error or a counted 0 first).
    """
    if not all(math.isfinite(r) for r in rewards):
        raise ValueError(f"classify_group needs finite rewards (got {list(rewards)})")
    if max(rewards) != min(rewards):
        return "signal"
    return "too_easy" if rewards[0] > 0 else "too_hard"


class QueryPool:
    """Weighted pool of query ids.

    Args:
        ids: query ids; duplicates are an error.
        seed: seed of the draws.
        exhaustion: when fewer queries are active than a draw needs, ``reset`` starts a new epoch
            (every weight back to 1) and ``stop`` raises ``PoolExhausted``.
    """

    def __init__(self, ids: Sequence[str], seed: int = 0, exhaustion: Literal["reset", "stop"] = "reset") -> None:
        duplicates = [i for i, n in Counter(ids).items() if n > 1]
        if duplicates:
            shown = ", ".join(map(repr, duplicates[:5])) + (" ..." if len(duplicates) > 5 else "")
            raise ValueError(f"duplicate query ids in the training set: {shown}")
        if not ids:
            raise ValueError("the query pool is empty: the training set has no questions")
        if exhaustion not in ("reset", "stop"):
            raise ValueError(f"exhaustion must be reset or stop (got {exhaustion!r})")
        self.ids = list(ids)
        self.exhaustion = exhaustion
        n = len(self.ids)
        self.weights = np.ones(n, dtype=np.float64)
        self.times_drawn = np.zeros(n, dtype=np.int32)
        self.epoch_draws = np.zeros(n, dtype=np.int32)  # draws since the current epoch began
        self.last_outcome = np.full(n, NEVER, dtype=np.int8)
        self.streak = np.zeros(n, dtype=np.int32)  # reports in a row with the outcome ``last_outcome``
        # (last outcome + 1) * HISTORY_STREAKS + streak (capped): one integer per query, kept up to date as
        # reports come in, so a weighting maps a million histories to factors with a single gather.
        self.history = np.zeros(n, dtype=np.int32)
        self.success = np.full(n, np.nan)  # share of rewarded trajectories in the last group (NaN: not reported)
        self.factors = np.ones(n, dtype=np.float64)  # draw-weight multipliers of a history-aware weighting
        self.epoch = 0
        self.counters: Counter[str] = Counter()
        self.rng = np.random.default_rng(seed)
        self._tree = _Fenwick(self.weights)
        self._stale = False  # the tree's sums no longer match the draw weights: rebuilt by the next draw
        self._active = n
        self._journal: list[tuple] | None = None  # what to undo, inside a transaction

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def active(self) -> int:
        """Queries with weight above 0."""
        return self._active

    @property
    def consumed(self) -> int:
        """Queries with weight 0."""
        return len(self.ids) - self.active

    def draw(self, n: int) -> np.ndarray:
        """Indices of ``n`` distinct active queries, drawn in proportion to weight times factor.

        Successive sampling: each pick is proportional to the draw weights of the queries not yet
        picked in this draw. A binary indexed tree makes each pick O(log pool size); the tree is
        rebuilt from the draw weights at the start of a draw whenever anything changed since the
        last (one vectorised pass), so that its rounding never depends on the order of past
        updates and a restored pool draws the same.
        """
        if n < 1:
            raise ValueError(f"a draw needs at least 1 query (got {n})")
        if n > len(self.ids):
            raise ValueError(f"a draw of {n} queries needs a pool at least that large (the pool has {len(self.ids)})")
        if self.active < n:
            if self.exhaustion == "stop":
                raise PoolExhausted(f"only {self.active} active queries are left for a draw of {n} "
                                    f"(epoch {self.epoch}); training stops (exhaustion: stop)")  # fmt: skip
            if self._journal is not None:
                self._journal.append(("epoch", self.weights.copy(), self.epoch_draws.copy()))
            self.new_epoch()
        if self._stale:
            # The sums as a function of the draw weights alone (one numpy pass, not the running updates of
            # earlier picks and reports), so that a pool restored from its weights draws exactly as this one.
            self._tree.rebuild(self.draw_weights())
        chosen: list[int] = []
        picked: set[int] = set()
        misses = 0
        while len(chosen) < n and misses < 64:
            i = self._tree.find(self.rng.random() * self._tree.total)
            if self.weights[i] <= 0 or i in picked:
                misses += 1  # rounding put the pick on a boundary; pick again
                continue
            chosen.append(i)
            picked.add(i)
            self._tree.add(i, -self.weights[i] * self.factors[i])  # out of the rest of this draw
        if len(chosen) < n:
            # The tree's running sums cannot resolve what is left (weights many orders of magnitude
            # below the rest, or accumulated rounding): finish exactly.
            rest = np.flatnonzero(self.weights > 0)
            rest = rest[~np.isin(rest, chosen)]
            p = self.weights[rest] * self.factors[rest]
            p /= p.sum()
            chosen += self.rng.choice(rest, size=n - len(chosen), replace=False, p=p).tolist()
        self._stale = True  # the picks took their weights out of the sums
        result = np.asarray(chosen, dtype=np.int64)
        if self._journal is not None:
            self._journal.append(("draw", result.copy()))
        self.times_drawn[result] += 1
        self.epoch_draws[result] += 1
        self.counters["draws"] += 1
        self.counters["drawn"] += n
        return result

    def draw_weights(self) -> np.ndarray:
        """What a draw is proportional to: each query's weight times its factor (0 for consumed queries)."""
        return self.weights * self.factors

    def set_factors(self, factors: np.ndarray) -> None:
        """Scale every query's draw weight by ``factors`` (positive), from the next draw on; the pool keeps the array.

        A history-aware weighting sets them after each step; they never consume a query (a factor
        is above 0) and never revive one (a consumed query's weight stays 0).
        """
        factors = np.asarray(factors, dtype=np.float64)
        # min and max, not elementwise tests: two passes over a million factors, no temporaries.
        if factors.shape != self.weights.shape or not (factors.min() > 0 and np.isfinite(factors.max())):
            raise ValueError(f"factors must be {len(self.weights)} finite numbers above 0")
        self.factors = factors
        self._stale = True

    def new_epoch(self) -> None:
        """Every query active again with weight 1 (history is kept)."""
        self.weights[:] = 1.0
        self.epoch_draws[:] = 0
        self._sync()
        self.epoch += 1
        self.counters["epochs"] += 1

    def report(
        self,
        indices: Sequence[int],
        outcomes: Sequence[Outcome],
        new_weights: Sequence[float],
        success: Sequence[float] | None = None,
    ) -> dict[str, int]:
        """Record each drawn query's outcome (and share of rewarded trajectories, where known) and set its
        weight; returns this report's flip counts.

        A flip is a query whose group turned to signal after a zero-variance outcome the last time
        it was drawn: ``recovery`` from too hard (the policy improved), ``drift`` from too easy.
        """
        indices = np.asarray(indices, dtype=np.int64)
        codes = np.array([_CODE[o] for o in outcomes], dtype=np.int8)
        weights = np.asarray(new_weights, dtype=np.float64)
        if not (len(indices) == len(codes) == len(weights)) or (success is not None and len(success) != len(codes)):
            raise ValueError("indices, outcomes, new_weights and success must have the same length")
        if (weights < 0).any():
            raise ValueError("weights must not be negative")
        previous = self.last_outcome[indices]
        if self._journal is not None:
            self._journal.append(("report", indices.copy(), self.weights[indices].copy(), previous.copy(),
                                  self.streak[indices].copy(), self.success[indices].copy()))  # fmt: skip
        signal = codes == _CODE["signal"]
        flips = {
            "recovery": int(np.count_nonzero(signal & (previous == _CODE["too_hard"]))),
            "drift": int(np.count_nonzero(signal & (previous == _CODE["too_easy"]))),
        }
        self.last_outcome[indices] = codes
        self.streak[indices] = np.where(codes == previous, self.streak[indices] + 1, 1)
        self._update_history(indices)
        self.success[indices] = np.nan if success is None else np.asarray(success, dtype=np.float64)
        for i, w in zip(indices.tolist(), weights.tolist(), strict=True):
            self._active += int(w > 0) - int(self.weights[i] > 0)
            self.weights[i] = w
        self._stale = True
        self.counters.update({f"outcome_{o}": int(np.count_nonzero(codes == c)) for o, c in _CODE.items()})
        self.counters.update(flips)
        return flips

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Undo every draw and report made in the block if it raises, then re-raise.

        A step whose rollouts or rewards fail must not consume (or count, or advance the draw
        generator for) queries it never scored: afterwards the pool is as before the block, and
        a checkpoint of it resumes as if the step had not started. Undoing is O(pool size), but
        only on failure; a block that succeeds costs nothing extra.
        """
        if self._journal is not None:
            raise RuntimeError("pool transactions do not nest")
        saved = (self.rng.bit_generator.state, Counter(self.counters), self.epoch)
        self._journal = []
        try:
            yield
        except BaseException:
            self._undo(self._journal, *saved)
            raise
        finally:
            self._journal = None

    def _undo(self, journal: list[tuple], rng_state: dict, counters: Counter, epoch: int) -> None:
        for entry in reversed(journal):
            if entry[0] == "draw":
                self.times_drawn[entry[1]] -= 1  # a draw's indices are distinct
                self.epoch_draws[entry[1]] -= 1
            elif entry[0] == "epoch":
                self.weights[:], self.epoch_draws[:] = entry[1], entry[2]
            else:  # report
                _, indices, weights, outcomes, streaks, success = entry
                self.weights[indices], self.last_outcome[indices], self.streak[indices] = weights, outcomes, streaks
                self.success[indices] = success
        self.rng.bit_generator.state = rng_state
        self.counters, self.epoch = counters, epoch
        self._sync()

    def state_dict(self) -> dict[str, Any]:
        """Everything a restored pool needs to draw exactly as this one would."""
        return {
            "ids": list(self.ids),
            "weights": self.weights.copy(),
            "times_drawn": self.times_drawn.copy(),
            "epoch_draws": self.epoch_draws.copy(),
            "last_outcome": self.last_outcome.copy(),
            "streak": self.streak.copy(),
            "success": self.success.copy(),
            "factors": self.factors.copy(),
            "epoch": self.epoch,
            "counters": dict(self.counters),
            "rng": self.rng.bit_generator.state,
            "exhaustion": self.exhaustion,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["ids"]) != self.ids:
            raise ValueError("the saved pool holds other query ids than this training set")
        self.weights = np.array(state["weights"], dtype=np.float64)
        self.times_drawn = np.array(state["times_drawn"], dtype=np.int32)
        self.epoch_draws = np.array(state["epoch_draws"], dtype=np.int32)
        self.last_outcome = np.array(state["last_outcome"], dtype=np.int8)
        # Checkpoints from before history-aware weightings hold neither: no streaks counted, every factor 1.
        self.streak = np.array(state.get("streak", np.zeros(len(self.ids))), dtype=np.int32)
        self.factors = np.array(state.get("factors", np.ones(len(self.ids))), dtype=np.float64)
        self.success = np.array(state.get("success", np.full(len(self.ids), np.nan)), dtype=np.float64)
        self.epoch = int(state["epoch"])
        self.counters = Counter(state["counters"])
        self.rng.bit_generator.state = state["rng"]
        self.exhaustion = state["exhaustion"]
        self._sync()

    def _update_history(self, indices: np.ndarray | slice = slice(None)) -> None:
        capped = np.minimum(self.streak[indices], HISTORY_STREAKS - 1)
        self.history[indices] = (self.last_outcome[indices].astype(np.int32) + 1) * HISTORY_STREAKS + capped

    def _sync(self) -> None:
        """Derive the state that follows from the weights and outcomes (the search tree, at the next draw; the
        history codes; the active count)."""
        self._stale = True
        self._update_history()
        self._active = int(np.count_nonzero(self.weights > 0))
