"""ProcessPool: the agent loop in worker processes gives this process's trajectories, follows the weights, fails
loudly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lit_search_rl.retrieval.base import Document, Retriever
from lit_search_rl.retrieval.index import load_retriever
from lit_search_rl.rollout import process_engine
from lit_search_rl.rollout.agent import AgentLoop, RolloutConfig, Trajectory
from lit_search_rl.rollout.engine import SamplingConfig
from lit_search_rl.rollout.process_engine import PooledAgentLoop, ProcessPool, split_groups
from lit_search_rl.rollout.torch_engine import TorchEngine
from tests.test_agent_loop import ScriptedEngine


@pytest.fixture(scope="module")
def tokenizer(model_dir: Path):
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture
def model(model_dir: Path):
    return AutoModelForCausalLM.from_pretrained(model_dir)


QUESTIONS = [q for q in ("Who directed it?", "Where was she born?", "Which band?") for _ in range(3)]
CONFIG = RolloutConfig(max_turns=2, max_new_tokens_per_turn=12)


def assert_same(got: list[Trajectory], expected: list[Trajectory]) -> None:
    for g, e in zip(got, expected, strict=True):
        assert (g.prompt_ids, g.response_ids, g.loss_mask) == (e.prompt_ids, e.response_ids, e.loss_mask)
        assert (g.finish_reason, g.answer, g.text) == (e.finish_reason, e.answer, e.text)
        assert torch.allclose(torch.tensor(g.logprobs), torch.tensor(e.logprobs), atol=1e-5)


def test_workers_run_the_agent_loop_as_this_process_does(model, tokenizer, bm25_dir: Path) -> None:
    retriever = load_retriever(bm25_dir)
    pool = ProcessPool(model, tokenizer, workers=2, retriever=retriever)
    try:
        greedy = SamplingConfig(temperature=0.0)
        expected = AgentLoop(TorchEngine(model, tokenizer, greedy), retriever, tokenizer, CONFIG).rollout(QUESTIONS)
        pooled = PooledAgentLoop(pool, greedy, CONFIG)
        got = pooled.rollout(QUESTIONS)
        assert_same(got, expected)
        assert pooled.stats.generated_tokens == sum(sum(t.loss_mask) for t in got)
        assert pooled.rollout([]) == [] and pooled.stats.generated_tokens == 0
        runs = [PooledAgentLoop(pool, SamplingConfig(temperature=1.0, seed=seed), CONFIG).rollout(QUESTIONS)
                for seed in (3, 3, 4)]  # fmt: skip
    finally:
        pool.close()
    assert not any(p.is_alive() for p in pool._processes)
    tokens = [[t.response_ids for t in run] for run in runs]
    assert tokens[0] == tokens[1] and tokens[0] != tokens[2]


def test_workers_compute_with_the_weights_of_the_last_optimizer_step(model, tokenizer, bm25_dir: Path) -> None:
    retriever, greedy = load_retriever(bm25_dir), SamplingConfig(temperature=0.0)
    pool = ProcessPool(model, tokenizer, workers=2, retriever=retriever)
    try:
        PooledAgentLoop(pool, greedy, CONFIG).rollout(QUESTIONS)
        with torch.no_grad():  # as an optimizer step: in place, in this process
            for layer in model.model.layers:
                layer.self_attn.v_proj.weight.add_(torch.randn_like(layer.self_attn.v_proj.weight))
        expected = AgentLoop(TorchEngine(model, tokenizer, greedy), retriever, tokenizer, CONFIG).rollout(QUESTIONS)
        assert_same(PooledAgentLoop(pool, greedy, CONFIG).rollout(QUESTIONS), expected)
    finally:
        pool.close()


class _FailingLoop(AgentLoop):
    def rollout(self, questions: list[str]) -> list[Trajectory]:
        raise ValueError("the index is gone")


def test_a_failing_or_dead_worker_raises_with_its_reason(model, tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    pool = ProcessPool(model, tokenizer, workers=1)
    agent = PooledAgentLoop(pool, SamplingConfig(temperature=0.0), CONFIG)
    try:
        monkeypatch.setattr(process_engine, "AgentLoop", _FailingLoop)  # the forked worker inherits it
        with pytest.raises(RuntimeError, match="rollout worker 0 failed: ValueError: the index is gone"):
            agent.rollout(["Q?"])
        monkeypatch.undo()
        assert len(agent.rollout(["Q?"])) == 1  # a fresh start after it
        pool._processes[0].kill()
        pool._processes[0].join()
        with pytest.raises(RuntimeError, match=r"rollout worker 0 died \(exit code -9\)"):
            agent.rollout(["Q?"])
    finally:
        pool.close()
    with pytest.raises(ValueError, match="workers must be at least 1"):
        ProcessPool(model, tokenizer, workers=0)


class _ScriptedWorkerEngine(ScriptedEngine):
    """Writes the turns of ``SCRIPT`` in a worker, in place of the model."""

    def __init__(self, model, tokenizer, **options) -> None:
        super().__init__(tokenizer, SCRIPT)

    def begin(self, sampling: SamplingConfig, weights: tuple[int, ...]) -> None:
        return None


SCRIPT = {
    "Q one?": ["<search> festival </search>", "<search> born </search>", "<answer> Paris </answer>"],
    "Q two?": ["<answer> Rome </answer>"],
    "Q three?": ["<search> film </search>", "<answer> Oslo </answer>"],
}


def test_each_worker_searches_and_reads_for_its_own_questions(model, tokenizer, bm25_dir: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    monkeypatch.setattr(process_engine, "_WorkerEngine", _ScriptedWorkerEngine)  # forked workers inherit it
    retriever = load_retriever(bm25_dir)
    questions = ["Q one?", "Q one?", "Q two?", "Q three?", "Q three?"]
    config = RolloutConfig(max_information_tokens=4096)
    expected = AgentLoop(ScriptedEngine(tokenizer, SCRIPT), retriever, tokenizer, config).rollout(questions)
    pool = ProcessPool(model, tokenizer, workers=2, retriever=retriever)
    try:
        pooled = PooledAgentLoop(pool, SamplingConfig(), config)
        got = pooled.rollout(questions)
    finally:
        pool.close()
    assert [t.answer for t in got] == ["Paris", "Paris", "Rome", "Oslo", "Oslo"]
    for g, e in zip(got, expected, strict=True):  # information blocks and masks, turn by turn
        assert (g.response_ids, g.loss_mask, g.queries, g.num_turns) == (e.response_ids, e.loss_mask, e.queries,
                                                                          e.num_turns)  # fmt: skip
    assert pooled.stats.retriever_calls == 2 + 1  # worker 0: Q one's two turns (Q two answers); worker 1: Q three


class _WhereSearched(Retriever):
    """Answers every query with one passage that says whether ``forked`` ran in the process searching."""

    was_forked = False

    def forked(self) -> None:
        self.was_forked = True

    def _search(self, queries: list[str], k: int) -> list[list[Document]]:
        return [[Document("0", "t", "forked" if self.was_forked else "parent")] for _ in queries]


def test_workers_let_the_retriever_know_it_was_forked(model, tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(process_engine, "_WorkerEngine", _ScriptedWorkerEngine)
    retriever = _WhereSearched()
    pool = ProcessPool(model, tokenizer, workers=2, retriever=retriever)
    try:
        got = PooledAgentLoop(pool, SamplingConfig(), RolloutConfig()).rollout(["Q one?", "Q three?"])
    finally:
        pool.close()
    for t in got:  # each worker searched after its own call of forked; this process's retriever never was
        information = tokenizer.decode([i for i, m in zip(t.response_ids, t.loss_mask, strict=True) if not m])
        assert "forked" in information and "parent" not in information
    assert not retriever.was_forked


def test_questions_split_between_workers_keep_their_copies_together() -> None:
    questions = ["a"] * 4 + ["b"] * 4 + ["c"] * 4 + ["d"] * 4
    assert split_groups(questions, 2) == [(0, 8), (8, 16)]
    assert split_groups(["a"] * 3 + ["b"] * 5, 2) == [(0, 3), (3, 8)]
    assert split_groups(["a", "b", "c"], 3) == [(0, 1), (1, 2), (2, 3)]
    assert split_groups(["a"] * 4, 2) == [(0, 4), (4, 4)]  # one group: the other worker gets nothing


def test_the_grpo_module_rolls_out_in_workers_or_says_why_not(model_dir: Path, bm25_dir: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    from lit_search_rl.grpo import GRPOModule

    def runner(engine: str):
        module = GRPOModule(model=str(model_dir), retriever=str(bm25_dir), group_size=2, batch_size=1,
                            micro_batch_size=2, rollout_workers=2, engine=engine)  # fmt: skip
        module.configure_model()
        return module

    torch_module = runner("torch")
    assert type(torch_module.runner.agent_for(torch_module.policy, SamplingConfig())) is PooledAgentLoop
    torch_module.runner.close()
    hf_module = runner("hf")
    with caplog.at_level("INFO"):
        agents = [hf_module.runner.agent_for(hf_module.policy, SamplingConfig()) for _ in range(2)]
    assert all(type(a) is AgentLoop for a in agents) and hf_module.runner._pool is None
    notices = [r.getMessage() for r in caplog.records if "rollout_workers" in r.getMessage()]
    assert notices == ["model.rollout_workers 2 unused, rollouts run in this process: they run the torch engine, "
                       "not hf"]  # fmt: skip
