"""The query sampler (``data/query_sampler.py``) and the data module that owns it: steps, undo, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lit_search_rl.data.pool import OUTCOMES, QueryPool
from lit_search_rl.data.query_sampler import draw_step
from lit_search_rl.data.strategies import STRATEGIES, make_strategy

IDS = [f"q{i}" for i in range(40)]


@settings(max_examples=60, deadline=None)
# Recycled weights far below 1: a pool restored from a checkpoint must draw as the running pool does, even
# where rebuilding the running sums from the weights would round differently.
@example("recycle", [["too_hard"] * 12] * 8, 5, 2.220446049250313e-16)
@given(
    st.sampled_from(sorted(STRATEGIES)),
    st.lists(st.lists(st.sampled_from(OUTCOMES), min_size=12, max_size=12), min_size=1, max_size=25),
    st.integers(0, 25),
    st.floats(0.0, 1.0),
)
def test_no_query_is_lost_or_duplicated_and_restores_draw_identically(name, steps, save_at, recycled_weight) -> None:
    strategy = make_strategy(name, batch_size=3, oversample=2, max_rounds=2, recycled_weight=recycled_weight)
    pool = QueryPool(IDS, seed=5)
    save_at %= len(steps)  # every example saves, restores and compares
    saved = None
    rounds = iter(steps * 4)

    def outcomes(idx):
        return next(rounds)[: len(idx)]

    for n, _ in enumerate(steps):
        if n == save_at:
            saved = pool.state_dict()
            ahead = [next(rounds) for _ in range(4)]  # the same outcomes for both runs
            feed = iter(ahead)
            later = [draw_step(pool, strategy, lambda idx, f=feed: next(f)[: len(idx)]).drawn for _ in range(2)]
            restored = QueryPool(IDS, seed=99)  # another seed: the state must carry the generator
            restored.load_state_dict(saved)
            feed = iter(ahead)
            again = [draw_step(restored, strategy, lambda idx, f=feed: next(f)[: len(idx)]).drawn
                     for _ in range(2)]  # fmt: skip
            assert again == later
            assert np.array_equal(restored.weights, pool.weights)
            break
        result = draw_step(pool, strategy, outcomes)
        assert len(set(result.drawn)) == len(result.drawn) or pool.epoch > 0  # a new epoch may repeat a query
        assert set(result.chosen) <= set(result.drawn)
        # Every query is in exactly one state, and the counts agree with the weights.
        assert pool.active + pool.consumed == len(IDS) and pool.active == int((pool.weights > 0).sum())
        assert (pool.weights >= 0).all()


@pytest.mark.parametrize("strategy", ["recycle", "bounded_dapo", "dapo"])
@pytest.mark.parametrize("weighting", ["none", "greso"])
def test_recycling_datamodule_resumes_with_the_same_draws(world_dir, strategy: str, weighting: str) -> None:
    from lit_search_rl.data.recycling_datamodule import RecyclingDataModule

    def outcome(records):  # deterministic in the question
        return [("signal", "too_hard", "too_easy")[int(r.id.split("-")[-1]) % 3] for r in records]

    def run(dm, steps):
        return [dm.sampler.step(outcome).drawn for _ in range(steps)]

    oversample = None if strategy == "dapo" else 2

    def make():
        return RecyclingDataModule(str(world_dir / "train.jsonl"), strategy=strategy, weighting=weighting,
                                   batch_size=3, oversample=oversample, seed=4)  # fmt: skip

    whole = make()
    whole.setup("fit")
    uninterrupted = run(whole, 6)
    if weighting == "greso":  # the weighting was at work: lowered queries, a moved controller
        assert (whole.pool.factors < 1).any() and whole.sampler.weighting.state_dict() != {"p_easy": 0.5, "p_hard": 0.5}
    first = make()
    first.setup("fit")
    head = run(first, 3)
    saved = first.state_dict()
    resumed = make()
    resumed.load_state_dict(saved)  # before setup, as when Lightning restores a checkpoint
    resumed.setup("fit")
    assert head + run(resumed, 3) == uninterrupted


class ScoringFailed(Exception):
    pass


def fail_on_round(n: int):
    """Outcomes for ``draw_step`` that raise on the n-th round, as a failing reward does."""
    rounds = iter(range(10**6))

    def outcomes(idx):
        if next(rounds) == n:
            raise ScoringFailed("the reward raised")
        return ["signal" if i % 2 else "too_hard" for i in idx]

    return outcomes


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_a_failed_scoring_leaves_the_draw_undone(name: str) -> None:
    # No query whose group was not scored is consumed, and the pool draws next exactly as if the
    # failed draw never happened (a checkpoint written after the failure resumes exactly).
    pool, twin = QueryPool(IDS, seed=5), QueryPool(IDS, seed=5)
    strategy = make_strategy(name, batch_size=4, oversample=2, max_rounds=3)
    draw_step(pool, strategy, fail_on_round(10))  # one step that succeeds on both
    draw_step(twin, strategy, fail_on_round(10))
    before = pool.state_dict()
    with pytest.raises(ScoringFailed):
        draw_step(pool, strategy, fail_on_round(0))
    after = pool.state_dict()
    assert pool.active == twin.active and (pool.weights == before["weights"]).all()
    same = [np.array_equal(after[k], before[k], equal_nan=before[k].dtype.kind == "f")
            if isinstance(before[k], np.ndarray) else after[k] == before[k] for k in before]  # fmt: skip
    assert all(same)
    assert (pool.draw(8) == twin.draw(8)).all()


def test_a_failed_later_round_undoes_the_whole_step() -> None:
    # DAPO's second round fails after the first was reported: the first round's consumed queries come back too.
    pool = QueryPool(IDS, seed=2)
    before = pool.state_dict()
    with pytest.raises(ScoringFailed):
        draw_step(pool, make_strategy("dapo", batch_size=4, max_rounds=3), fail_on_round(1))
    assert pool.active == len(IDS) and pool.counters == before["counters"]
    assert (pool.last_outcome == before["last_outcome"]).all() and (pool.times_drawn == 0).all()


def test_a_failed_scoring_at_an_epoch_boundary_restores_the_old_epoch() -> None:
    pool = QueryPool(IDS[:6], seed=1)
    pool.report(pool.draw(4), ["signal"] * 4, [0.0] * 4)  # 2 active: the next draw of 4 starts an epoch
    before = pool.state_dict()
    strategy = make_strategy("grpo", batch_size=4)
    with pytest.raises(ScoringFailed):
        draw_step(pool, strategy, fail_on_round(0))
    assert pool.epoch == before["epoch"] == 0 and pool.active == 2
    assert (pool.weights == before["weights"]).all() and (pool.epoch_draws == before["epoch_draws"]).all()
    assert pool.counters == before["counters"]


def test_recycling_datamodule_keeps_the_drawn_queries_active_when_scoring_fails(world_dir) -> None:
    from lit_search_rl.data.recycling_datamodule import RecyclingDataModule

    dm = RecyclingDataModule(str(world_dir / "train.jsonl"), batch_size=3, oversample=2, seed=4)
    dm.setup("fit")
    dm.sampler.step(lambda records: ["signal"] * len(records))  # 3 consumed
    digest, active = dm.sampler.digest(), dm.pool.active

    def failing(records):
        raise ValueError(f"reward my:fn raised ValueError on question {records[0].id}: boom")

    with pytest.raises(ValueError, match="reward my:fn"):
        dm.sampler.step(failing)
    assert dm.pool.active == active == len(dm.records) - 3 and dm.sampler.digest() == digest


def test_a_step_says_where_its_chosen_groups_are_and_reports_the_pool(world_dir) -> None:
    from lit_search_rl.data.recycling_datamodule import RecyclingDataModule

    dm = RecyclingDataModule(str(world_dir / "train.jsonl"), batch_size=2, oversample=3, seed=1)
    dm.setup("fit")
    rounds = []

    def outcomes(records):
        rounds.append(records)
        return ["too_hard", "signal", "too_easy", "signal", "signal", "too_hard"][: len(records)]

    result = dm.sampler.step(outcomes)
    assert result.picked == [1, 3] and [result.drawn[i] for i in result.picked] == result.chosen
    assert [r.id for r in rounds[0]] == [dm.records[i].id for i in result.drawn]
    metrics = dm.sampler.metrics(result)
    assert metrics["pool/consumed"] == 2 and metrics["pool/active"] == len(dm.records) - 2
    assert metrics["train/recycled_fraction"] == 0.0


def test_b_and_k_have_one_owner(world_dir) -> None:
    from types import SimpleNamespace

    from lit_search_rl.data.recycling_datamodule import RecyclingDataModule

    module = SimpleNamespace(hparams={"batch_size": 4, "oversample": 2})
    dm = RecyclingDataModule(str(world_dir / "train.jsonl"))
    dm.trainer = SimpleNamespace(lightning_module=module)
    dm.setup("fit")  # the module's B and k, unset here
    assert (dm.sampler.strategy.batch_size, dm.sampler.strategy.oversample) == (4, 2)
    for option, value in (("batch_size", 8), ("oversample", 3)):
        dm = RecyclingDataModule(str(world_dir / "train.jsonl"), **{option: value})
        dm.trainer = SimpleNamespace(lightning_module=module)
        with pytest.raises(ValueError, match=f"data.{option} .{value}. disagrees with model.{option}"):
            dm.setup("fit")
    dm = RecyclingDataModule(str(world_dir / "train.jsonl"), strategy="grpo")
    dm.trainer = SimpleNamespace(lightning_module=module)
    with pytest.raises(ValueError, match="model.oversample is 2 but strategy grpo does not use it"):
        dm.setup("fit")


def test_the_pool_holds_every_training_file_given(world_dir, tmp_path) -> None:
    from lit_search_rl.data.recycling_datamodule import RecyclingDataModule
    from lit_search_rl.io import read_jsonl

    rows = list(read_jsonl(world_dir / "train.jsonl"))
    more = tmp_path / "more.jsonl"
    more.write_text("".join(json.dumps({**r, "id": f"more-{r['id']}"}) + "\n" for r in rows[:5]))
    dm = RecyclingDataModule([str(world_dir / "train.jsonl"), str(more)], batch_size=3, oversample=2, seed=4)
    dm.setup("fit")
    assert len(dm.records) == dm.pool.active == len(rows) + 5
    assert [r.id for r in dm.records[-5:]] == [f"more-{r['id']}" for r in rows[:5]]
    twice = RecyclingDataModule([str(world_dir / "train.jsonl")] * 2, batch_size=3, oversample=2)
    with pytest.raises(ValueError, match="duplicate query ids"):
        twice.setup("fit")
    with pytest.raises(FileNotFoundError, match=r"data.train: .*nope.jsonl does not exist"):
        RecyclingDataModule([str(more), str(tmp_path / "nope.jsonl")]).setup("fit")
