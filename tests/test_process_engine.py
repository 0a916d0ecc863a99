"""ProcessPool: TorchEngine in worker processes gives TorchEngine's tokens, follows the weights, fails loudly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_search_rl.rollout.engine import SamplingConfig
from lit_search_rl.rollout.process_engine import ProcessPool
from lit_search_rl.rollout.torch_engine import TorchEngine


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path):
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture
def model(model_dir: Path):
    return AutoModelForCausalLM.from_pretrained(model_dir)


def prompts_of(tokenizer, n: int) -> list[list[int]]:
    words = ["who", "directed", "the", "film", "that", "won", "the", "prize", "in", "the", "city", "where"]
    return [tokenizer(" ".join(words[: 2 + i % 7]), add_special_tokens=False)["input_ids"] for i in range(n)]


def test_workers_give_the_engines_greedy_tokens_turn_after_turn(model, tokenizer) -> None:
    prompts = [p for p in prompts_of(tokenizer, 5) for _ in range(2)]  # two rows of each prompt, as K rollouts
    greedy = SamplingConfig(temperature=0.0)
    pool = ProcessPool(model, tokenizer, workers=2)
    try:
        alone, pooled = TorchEngine(model, tokenizer, greedy), pool.engine(greedy)
        for _ in range(2):  # the second turn extends each row: the worker that holds it continues it
            expected = alone.generate(prompts, [6] * len(prompts), ["the"])
            got = pooled.generate(prompts, [6] * len(prompts), ["the"])
            assert [g.token_ids for g in got] == [e.token_ids for e in expected]
            assert [g.finish for g in got] == [e.finish for e in expected]
            for g, e in zip(got, expected, strict=True):
                assert torch.allclose(torch.tensor(g.logprobs), torch.tensor(e.logprobs), atol=1e-5)
            prompts = [[*p, *g.token_ids, 7, 8] for p, g in zip(prompts, got, strict=True)]
        assert {pool._owner(p) for p in prompts} == {0, 1}  # both workers held rows
    finally:
        pool.close()
    assert not any(p.is_alive() for p in pool._processes)


def test_workers_compute_with_the_weights_of_the_last_optimizer_step(model, tokenizer) -> None:
    prompts = prompts_of(tokenizer, 4)
    greedy = SamplingConfig(temperature=0.0)
    pool = ProcessPool(model, tokenizer, workers=2)
    try:
        first = pool.engine(greedy).generate(prompts, [6] * 4, [])
        with torch.no_grad():  # as an optimizer step: in place, in this process
            for layer in model.model.layers:
                layer.self_attn.v_proj.weight.add_(torch.randn_like(layer.self_attn.v_proj.weight))
        turn = [[*p, *g.token_ids] for p, g in zip(prompts, first, strict=True)]
        expected = TorchEngine(model, tokenizer, greedy, reuse_prefixes=False).generate(turn, [6] * 4, [])
        got = pool.engine(greedy).generate(turn, [6] * 4, [])  # no keys and values of the old weights reused
        assert [g.token_ids for g in got] == [e.token_ids for e in expected]
        for g, e in zip(got, expected, strict=True):
            assert torch.allclose(torch.tensor(g.logprobs), torch.tensor(e.logprobs), atol=1e-5)
    finally:
        pool.close()


def test_seeded_sampling_repeats_for_the_same_seed(model, tokenizer) -> None:
    prompts = prompts_of(tokenizer, 6)
    pool = ProcessPool(model, tokenizer, workers=2)
    try:
        runs = [pool.engine(SamplingConfig(temperature=1.0, seed=seed)).generate(prompts, [8] * 6, [])
                for seed in (3, 3, 4)]  # fmt: skip
    finally:
        pool.close()
    tokens = [[g.token_ids for g in run] for run in runs]
    assert tokens[0] == tokens[1] and tokens[0] != tokens[2]


def test_a_failing_or_dead_worker_raises_with_its_reason(model, tokenizer) -> None:
    pool = ProcessPool(model, tokenizer, workers=1)
    try:
        engine = pool.engine(SamplingConfig(temperature=0.0))
        with pytest.raises(RuntimeError, match="rollout worker 0 failed: "):
            engine.generate([[10**9]], [3], [])  # an id outside the vocabulary
        assert len(engine.generate(prompts_of(tokenizer, 1), [3], [])[0].token_ids) == 3  # a fresh start after it
        pool._processes[0].kill()
        pool._processes[0].join()
        with pytest.raises(RuntimeError, match=r"rollout worker 0 died \(exit code -9\)"):
            engine.generate(prompts_of(tokenizer, 1), [3], [])
    finally:
        pool.close()
    with pytest.raises(ValueError, match="workers must be at least 1"):
        ProcessPool(model, tokenizer, workers=0)


def test_rows_follow_their_worker_unless_one_would_wait_for_many(model, tokenizer) -> None:
    pool = ProcessPool(model, tokenizer, workers=2, imbalance=2)  # not started: routing only
    held = [[1] * length for length in (5, 9, 3, 7, 8, 6)]  # six sequences of worker 0, one of worker 1
    for sequence, worker in [*((p, 0) for p in held), ([2, 2], 1)]:
        pool._held.add(sequence, None, worker, 0)
    prompts = [[*p, 4] for p in held] + [[2, 2, 4], [3, 3], [3, 3]]  # continued rows, then a new prompt twice
    shares = pool._route(prompts)
    assert sorted(r for share in shares for r in share) == list(range(9))
    assert abs(len(shares[0]) - len(shares[1])) <= 2
    assert {7, 8} <= set(shares[1])  # the new prompt's copies went together to the less loaded worker
    moved = set(shares[1]) & set(range(6))
    assert moved and all(len(prompts[m]) <= len(prompts[k]) for m in moved for k in shares[0])  # the shortest moved
