"""The rollout runner of GRPO: K trajectories per question, sharded over ranks, with the configured engine.

It chooses the engine (``torch``: the lean decoding loop, falling back to ``hf`` once with a
notice for models it cannot run; ``hf``: transformers' ``generate``; ``vllm``: a colocated vLLM
engine kept in sync by the ``VLLMWeightSync`` callback), generates with an unsharded copy of an
FSDP-sharded policy, seeds each rank's sampling, and books where the time went.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from lightning.pytorch.utilities import rank_zero_info

from lit_search_rl.data.qa import QARecord
from lit_search_rl.distributed import gather_shards, rank_and_world, shard
from lit_search_rl.fsdp import copy_full_weights, is_sharded
from lit_search_rl.policy import load_policy
from lit_search_rl.retrieval.base import Retriever
from lit_search_rl.rollout.agent import AgentLoop, RolloutConfig, Trajectory, context_length_of
from lit_search_rl.rollout.engine import GenerationEngine, SamplingConfig
from lit_search_rl.rollout.hf_engine import HFEngine
from lit_search_rl.rollout.process_engine import PooledAgentLoop, ProcessPool
from lit_search_rl.rollout.torch_engine import TorchEngine, unsupported_reason
from lit_search_rl.rollout.vllm_engine import VLLMConfig, VLLMEngine
from lit_search_rl.timing import PhaseTimer

ENGINES = ("torch", "hf", "vllm")
SamplingOf = Callable[[int], SamplingConfig]
"""The token sampling settings of a rank (its seed differs from the other ranks')."""


def step_sampling(sampling: SamplingConfig, step: int, rank: int) -> SamplingConfig:
    """The sampling settings of training batch ``step`` on ``rank``: a seed of its own for each (or none)."""
    seed = None if sampling.seed is None else sampling.seed + 1000 * step + 7919 * rank
    return SamplingConfig(sampling.temperature, sampling.top_p, sampling.top_k, seed)


class RolloutRunner:
    """Runs the agent loop for the GRPO module.

    Args:
        engine: ``torch``, ``hf`` or ``vllm``.
        model: the policy's folder, loaded again for the unsharded rollout copy of an FSDP policy.
        dtype: its parameter dtype.
        tokenizer: the policy's tokenizer.
        rollout: the agent loop's limits.
        timer: where ``generate`` and ``retrieve`` seconds are booked (inside ``rollout``).
        workers: worker processes of the ``torch`` engine for a policy on the CPU (1: this process).
    """

    def __init__(self, engine: str, model: str, dtype: str, tokenizer, rollout: RolloutConfig,
                 timer: PhaseTimer, workers: int = 1) -> None:  # fmt: skip
        self.engine, self.model, self.dtype, self.workers = engine, model, dtype, workers
        self._pool: ProcessPool | None = None  # the torch engine's worker processes (workers > 1)
        self.tokenizer, self.config, self.timer = tokenizer, rollout, timer
        self.vllm: VLLMEngine | None = None  # the colocated vLLM engine (engine vllm), made by the module's setup
        self.retriever: Retriever | None = None
        self._copy: torch.nn.Module | None = None  # generates for a sharded policy (torch, hf engines)
        self._told_fallback = False  # the torch engine's fallback notice is given once
        self._told_no_workers = False  # and so is the notice that rollout workers are not used

    def close(self) -> None:
        """Stop the torch engine's worker processes, if any."""
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def start_vllm(self, config: VLLMConfig) -> None:
        """Start the colocated vLLM engine of this rank (after the process group is set up)."""
        self.vllm = VLLMEngine(self.model, config, max_model_len=self.config.max_total_tokens)

    def run(self, policy: torch.nn.Module, questions: list[QARecord], sizes: Sequence[int],
            sampling: SamplingOf) -> list[list[Trajectory]]:  # fmt: skip
        """``sizes[i]`` trajectories of question i, grouped by question, in the order of ``questions``.

        Every rank holds the same questions; each rolls out its shard as one batched agent loop
        (groups of different sizes batch together), and the groups are gathered so every rank
        returns all of them.
        """
        rank, world = rank_and_world()
        picks = shard(questions, rank, world)
        counts = [sizes[i] for i in picks]
        agent = self.agent_for(policy, sampling(rank))
        flat = agent.rollout([questions[i].question for i, n in zip(picks, counts, strict=True) for _ in range(n)])
        # The agent loop's own bookkeeping (parsing, token ids) stays booked as "rollout".
        self.timer.add("generate", agent.stats.generate_seconds, within="rollout")
        self.timer.add("retrieve", agent.stats.retrieve_seconds, within="rollout")
        ends = list(itertools.accumulate(counts))
        return gather_shards([flat[end - n : end] for n, end in zip(counts, ends, strict=True)], len(questions))

    def agent_for(self, policy: torch.nn.Module, sampling: SamplingConfig) -> AgentLoop | PooledAgentLoop:
        """The agent loop that rolls out from ``policy``'s current weights with ``sampling``: in this process,
        or in the torch engine's worker processes (each running the loop whole on its share of the questions)."""
        context_length = context_length_of(policy)
        if self.workers > 1:
            reason = self._no_workers_reason(policy)
            if reason is None:
                if self._pool is None or self._pool.model is not policy or self._pool.retriever is not self.retriever:
                    self.close()
                    self._pool = ProcessPool(policy, self.tokenizer, self.workers, retriever=self.retriever)
                return PooledAgentLoop(self._pool, sampling, self.config, context_length)
            if not self._told_no_workers:
                rank_zero_info(f"model.rollout_workers {self.workers} unused, rollouts run in this process: {reason}")
                self._told_no_workers = True
        return AgentLoop(self.engine_for(policy, sampling), self.retriever, self.tokenizer, self.config,
                         context_length=context_length)  # fmt: skip

    def _no_workers_reason(self, policy: torch.nn.Module) -> str | None:
        """Why rollout workers cannot roll out from ``policy``, or None when they can."""
        if self.engine != "torch" or self.vllm is not None:
            return f"they run the torch engine, not {self.engine}"
        if is_sharded(policy):
            return "the policy is sharded"
        if next(policy.parameters()).device.type != "cpu":
            return "the policy is not on the CPU"
        return unsupported_reason(policy)

    def engine_for(self, policy: torch.nn.Module, sampling: SamplingConfig) -> GenerationEngine:
        """The engine that generates from ``policy``'s current weights with ``sampling``."""
        if self.vllm is not None:
            self.vllm.sampling = sampling
            return self.vllm
        model = policy
        if is_sharded(policy):
            # A sharded policy cannot generate rank by rank (each forward is a collective), so an
            # unsharded copy gets the current weights and generates instead.
            if self._copy is None:
                device = next(policy.parameters()).device
                self._copy = load_policy(self.model, self.dtype).to(device).eval()
            copy_full_weights(policy, self._copy)
            model = self._copy
        if self.engine == "torch":
            reason = unsupported_reason(model)
            if reason is None:
                return TorchEngine(model, self.tokenizer, sampling)
            if not self._told_fallback:
                rank_zero_info(f"model.engine torch falls back to hf: {reason}")
                self._told_fallback = True
        return HFEngine(model, self.tokenizer, sampling)
