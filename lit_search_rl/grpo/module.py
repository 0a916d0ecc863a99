"""The GRPO LightningModule: rollouts with search, outcome rewards, group advantages, clipped updates.

One training step, as ``training_step`` tells it:

1. sample: the data module's ``QuerySampler`` draws questions; each round is rolled out (K
   trajectories per question, multi-turn with search) and rewarded here, and the sampler picks
   the effective batch (at most B signal groups) and updates its pool;
2. advantages: normalised within each chosen group (``update.make_update_batch``);
3. update: ``update_epochs`` passes of micro-batched backward and one optimizer step each.

An empty effective batch takes no optimizer step; a non-finite loss skips the step and is
counted. The parts live beside this file: ``rollouts`` (engines, sharding, seeding), ``update``
(the gradient maths as functions), ``losses`` (registered advantage estimators and policy
losses), ``evaluation`` (validate and test), ``step_metrics``. Weight sync into vLLM is the
``VLLMWeightSync`` callback's job.

Run: ``lit-search-rl fit --config configs/synthetic/grpo.yaml``.
"""

from __future__ import annotations

import time
from typing import Literal

import torch
from lightning import LightningModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from lit_search_rl.callbacks.weight_sync import require_weight_sync
from lit_search_rl.checks import check_grpo_settings, check_one_of
from lit_search_rl.data.pool import PoolExhausted
from lit_search_rl.data.qa import QARecord
from lit_search_rl.data.query_sampler import QuerySampler
from lit_search_rl.distributed import all_ranks_true, sum_over_ranks
from lit_search_rl.evaluation.evaluator import EvalConfig, QAEvaluation
from lit_search_rl.grpo.config import LossConfig, OptimizerConfig
from lit_search_rl.grpo.evaluation import EvaluatesAgent
from lit_search_rl.grpo.rollouts import ENGINES, RolloutRunner, step_sampling
from lit_search_rl.grpo.step_metrics import rollout_metrics, time_metrics
from lit_search_rl.grpo.update import (
    UpdateBatch,
    accumulate_gradients,
    frozen_logprobs,
    gradients_finite,
    make_update_batch,
    token_logprobs,
)
from lit_search_rl.policy import ExportsPolicy, build_policy, load_tokenizer
from lit_search_rl.rewards import INVALID_REWARDS, InvalidReward, get_reward, score_groups
from lit_search_rl.rollout.agent import RolloutConfig, Trajectory
from lit_search_rl.rollout.engine import SamplingConfig
from lit_search_rl.rollout.vllm_engine import VLLMConfig, VLLMEngine
from lit_search_rl.timing import PhaseTimer


class GRPOModule(EvaluatesAgent, ExportsPolicy, LightningModule):
    """GRPO for search agents, with manual optimization.

    Args:
        model: Folder or Hub name of the policy (``AutoModelForCausalLM``), e.g. the SFT export.
        retriever: Index folder (``lit-search-rl index``) or URL of a Search-R1 retrieval server; ``empty://`` for
            a retriever that returns no passage (the no-search control); unset when a ``RetrieverService`` callback
            provides it. Opened by ``retrieval.open.open_retriever``, with the same cache as the callback's.
        dtype: Parameter dtype.
        group_size: Rollouts per question (K); at least 2, or no group has a baseline.
        batch_size: Signal groups per update (B). The data module's strategy fills it; this option owns B.
        oversample: Candidate questions drawn per round, as a multiple of ``batch_size`` (k); owns k.
        reward: Reward name from the registry (``em``, ``f1``, ``cover_em``), or ``module:function`` of your own.
        invalid_reward: What a NaN or infinite reward does: ``error`` stops training with a message naming the
            question and the answer; ``zero`` scores it 0 and counts it in ``train/invalid_rewards``.
        loss: Advantage estimator, policy loss, aggregation, clipping and KL penalty (``LossConfig``).
        optimizer: Learning rate, warm-up, weight decay and gradient clipping (``OptimizerConfig``).
        micro_batch_size: Trajectories per forward/backward; must divide ``group_size * batch_size``.
        update_epochs: Passes over each effective batch, with the old logprobs kept from before the first.
            One pass is on-policy (ratio 1), so it needs no separate old-logprob forward.
        gradient_checkpointing: Trade compute for memory in the policy's backward.
        lora_rank: LoRA rank through peft; 0 trains all weights.
        rollout: Agent-loop limits (turns, tokens, queries, documents) and the agent protocol.
        sampling: Temperature, top-p, top-k and seed of the rollouts' tokens.
        engine: Rollout engine: ``torch`` runs the policy itself in a lean decoding loop (the fast path on
            the CPU; llama, qwen2 and qwen3 models, others fall back to ``hf`` with a notice), ``hf`` with
            transformers' ``generate``, ``vllm`` with a colocated vLLM engine that the ``VLLMWeightSync``
            callback keeps up to date.
        rollout_workers: Worker processes that roll out with the ``torch`` engine for an unsharded policy on the
            CPU, each running the agent loop on a share of the step's questions with one thread, over the
            policy's weights in shared memory (1: in this process). A decode step of a small model is Python
            and small kernels that one core runs alone, so two workers on two cores generate about 1.4-1.7x
            the tokens per second of one.
        vllm: Memory fraction, sleep mode, dtype and length settings of the vLLM engine.
        export_dir: Where to save the policy in Hugging Face format at each checkpoint and at the end of fit.
        evaluation: How ``validate``, ``test`` and validation during fit evaluate the agent (pass@k, judge).
    """

    def __init__(
        self,
        model: str,
        retriever: str | None = None,
        dtype: Literal["float32", "bfloat16", "float16"] = "float32",
        group_size: int = 4,
        batch_size: int = 8,
        oversample: int = 1,
        reward: str = "em",
        invalid_reward: InvalidReward = "error",
        loss: LossConfig | None = None,
        optimizer: OptimizerConfig | None = None,
        micro_batch_size: int = 8,
        update_epochs: int = 1,
        gradient_checkpointing: bool = False,
        lora_rank: int = 0,
        rollout: RolloutConfig | None = None,
        sampling: SamplingConfig | None = None,
        engine: Literal["torch", "hf", "vllm"] = "torch",
        rollout_workers: int = 1,
        vllm: VLLMConfig | None = None,
        export_dir: str | None = None,
        evaluation: EvalConfig | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.loss_config, self.optimizer_config = loss or LossConfig(), optimizer or OptimizerConfig()
        self.rollout_config = rollout or RolloutConfig()
        self.sampling = sampling or SamplingConfig()
        self.vllm_config = vllm or VLLMConfig()
        self.evaluation = QAEvaluation(evaluation or EvalConfig())
        self._check_settings()
        self.automatic_optimization = False
        self.reward_fn = get_reward(reward)
        self.tokenizer = load_tokenizer(model)
        self.timer = PhaseTimer()  # where each training step's time goes
        self.runner = RolloutRunner(engine, model, dtype, self.tokenizer, self.rollout_config, self.timer,
                                    rollout_workers)  # fmt: skip
        self.policy: torch.nn.Module | None = None
        self.reference: torch.nn.Module | None = None
        self.skipped_steps = 0
        self.step_rollouts = 0  # trajectories rolled out in the current training step (read by callbacks)
        self.step_invalid_rewards = 0  # non-finite rewards scored 0 in the current training step
        self.last_evaluation, self.last_results, self.last_predictions = None, [], None  # see EvaluatesAgent

    def _check_settings(self) -> None:
        h = self.hparams
        check_grpo_settings(h)  # sizes, update passes, reward: also run on the raw config before imports
        for name, choices in (("invalid_reward", INVALID_REWARDS), ("engine", ENGINES)):
            check_one_of(h, name, choices, "model.")
        self.loss_config.validate()
        self.optimizer_config.validate()
        self.rollout_config.validate()
        self.sampling.validate()
        if h.engine == "vllm":
            self.vllm_config.validate()
        if h.rollout_workers < 1:
            raise ValueError(f"model.rollout_workers must be at least 1 (got {h.rollout_workers})")

    # -- the parts the trainer wires: policy, engine, retriever, optimizer -------------------------

    @property
    def retriever(self):
        return self.runner.retriever

    @retriever.setter
    def retriever(self, retriever) -> None:  # set by a RetrieverService callback, or in setup
        self.runner.retriever = retriever

    @property
    def rollout_engine(self) -> VLLMEngine | None:
        """The colocated vLLM engine, when ``engine`` is vllm (the ``VLLMWeightSync`` callback pushes into it)."""
        return self.runner.vllm

    def configure_model(self) -> None:
        if self.policy is not None:
            return
        h = self.hparams
        # ModelParallelStrategy gives a device mesh: FSDP2 over the data-parallel ranks.
        mesh = self.device_mesh["data_parallel"] if self.device_mesh is not None else None
        self.policy, self.reference = build_policy(h.model, h.dtype, h.lora_rank, h.gradient_checkpointing,
                                                   reference=self.loss_config.kl_coef > 0, mesh=mesh)  # fmt: skip

    def setup(self, stage: str) -> None:
        if self.hparams.engine == "vllm" and self.runner.vllm is None:
            if stage == "fit":
                require_weight_sync(self.trainer)
            # After the strategy set up the process group: each rank gets its own colocated engine.
            self.runner.start_vllm(self.vllm_config)
        if self.retriever is None:  # a RetrieverService callback may have set it already
            if self.hparams.retriever is None:
                raise ValueError("model.retriever is not set and no RetrieverService callback provides one")
            from lit_search_rl.retrieval.open import open_retriever

            self.retriever = open_retriever(self.hparams.retriever)

    def teardown(self, stage: str) -> None:
        self.runner.close()
        if self.retriever is not None:
            self.retriever.close()
            self.retriever = None

    def configure_optimizers(self):
        return self.optimizer_config.build(p for p in self.policy.parameters() if p.requires_grad)

    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        return batch  # step numbers and question records stay on the host; only update tensors go to the device

    # -- the step ---------------------------------------------------------------------------

    def training_step(self, batch: int, batch_idx: int) -> None:
        start = time.perf_counter()
        self.timer.reset()
        self.step_rollouts = self.step_invalid_rewards = 0
        sampled = self.sample()
        if self.runner.vllm is not None:
            self.runner.vllm.sleep()  # hand the engine's memory to the update (with sleep mode on)
        if sampled is None:
            return
        groups, rewards, chosen = sampled
        zero_variance = self.loss_config.zero_variance_advantage  # RL-ZVP: zero-variance groups train too
        if chosen or (zero_variance and groups):
            with self.timer("update_batch"):
                batch = make_update_batch(groups, rewards, chosen, self.tokenizer.pad_token_id,
                                          self.loss_config.advantage_scale, self.device, zero_variance)  # fmt: skip
            self.update(batch)
        self.log_dict(time_metrics(time.perf_counter() - start, self.timer))

    def sample(self) -> tuple[list[list[Trajectory]], list[list[float]], list[int]] | None:
        """The step's groups, their rewards, and the positions of the effective batch among them.

        The data module's sampler draws and picks; every round it draws is rolled out and scored
        here. Returns None when the pool is exhausted under the ``stop`` policy (training ends).
        """
        sampler = self.query_sampler()
        groups, rewards = [], []

        def outcomes_of(questions: list[QARecord], sizes: list[int] | None = None) -> list[list[float]]:
            groups.extend(self.rollout(questions, sizes))
            rewards.extend(self.score(groups[-len(questions) :], questions))
            return rewards[-len(questions) :]  # the sampler classifies them; the pool learns each share rewarded

        try:
            with self.timer("pool"):  # the strategy's draws, reports and picks; rollouts time themselves
                result = sampler.step(outcomes_of)
        except PoolExhausted as e:
            rank_zero_info(f"stopping: {e}")
            self.trainer.should_stop = True
            return None
        with self.timer("logging"):
            metrics = rollout_metrics(groups, rewards, result.outcomes, result.picked, self.step_invalid_rewards)
            self.log("train/reward_mean", metrics.pop("train/reward_mean"), prog_bar=True)
            self.log_dict({**metrics, **sampler.metrics(result)})
            self.step_rollouts = sum(len(g) for g in groups)
        return groups, rewards, result.picked

    def query_sampler(self) -> QuerySampler:
        """The data module's ``QuerySampler``: the one way a GRPO step gets its questions."""
        datamodule = getattr(self.trainer, "datamodule", None)
        sampler = getattr(datamodule, "sampler", None)
        if not isinstance(sampler, QuerySampler):
            raise TypeError(f"GRPO training needs a data module with a QuerySampler (RecyclingDataModule); "
                            f"{type(datamodule).__name__} has none")  # fmt: skip
        return sampler

    def rollout(self, questions: list[QARecord], sizes: list[int] | None = None) -> list[list[Trajectory]]:
        """``sizes[i]`` trajectories of question i (K each by default), grouped by question, in the order of
        ``questions`` (all ranks' groups)."""
        step = self._logged_step() if self._trainer is not None else 0
        sizes = sizes if sizes is not None else [self.hparams.group_size] * len(questions)
        with self.timer("rollout"):
            return self.runner.run(self.policy, questions, sizes,
                                   lambda rank: step_sampling(self.sampling, step, rank))  # fmt: skip

    def score(self, groups: list[list[Trajectory]], questions: list[QARecord]) -> list[list[float]]:
        """The configured reward of each trajectory, grouped like ``groups``.

        A reward that raises or returns no number stops training with a ``RewardError`` naming the
        reward and the question; a non-finite one too, or is scored 0 and counted with
        ``invalid_reward: zero``. Raising here, before any pool report, leaves the drawn queries active.
        """
        with self.timer("reward"):
            rewards, invalid = score_groups(self.reward_fn, self.hparams.reward, groups, questions,
                                            self.hparams.invalid_reward)  # fmt: skip
        self.step_invalid_rewards += invalid
        return rewards

    def update(self, batch: UpdateBatch) -> None:
        """``update_epochs`` optimizer steps over the batch; a step with a non-finite loss or gradient is skipped."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        with self.timer("forward_backward"):
            # "Old" logprobs come from the policy before this batch's first update (PPO's pi_old).
            # With one pass the policy being trained is still pi_old: the training forward's own
            # detached logprobs are exactly pi_old's, so the extra no-grad forward is skipped.
            micro = self.hparams.micro_batch_size
            if self.hparams.update_epochs > 1:
                batch.old_logprobs = frozen_logprobs(self.policy, batch, micro, self.token_logprobs)
            if self.reference is not None:
                batch.ref_logprobs = frozen_logprobs(self.reference, batch, micro, self.token_logprobs)
        for _ in range(self.hparams.update_epochs):
            with self.timer("forward_backward"):
                optimizer.zero_grad(set_to_none=True)
                finite, totals = self.accumulate_gradients(batch)
            # Every rank must take (or skip) the same step, or their weights part ways.
            if not all_ranks_true(finite and gradients_finite(self.policy)):
                optimizer.zero_grad(set_to_none=True)  # nothing of a non-finite step reaches the weights
                self.skipped_steps += 1
                continue
            with self.timer("optimizer"):
                if self.optimizer_config.gradient_clip > 0:
                    self.clip_gradients(optimizer, gradient_clip_val=self.optimizer_config.gradient_clip,
                                        gradient_clip_algorithm="norm")  # fmt: skip
                optimizer.step()
                scheduler.step()
            with self.timer("logging"):
                if "advantage_mass" in totals:  # RL-ZVP: the share of the advantage mass on zero-variance groups
                    mass = totals.pop("advantage_mass")
                    totals["zero_variance_share"] = totals.pop("zero_variance_mass") / max(mass, 1e-12)
                self.log_update({f"train/{name}": value for name, value in totals.items()})
        with self.timer("logging"):
            self.log_update({"train/skipped_steps": float(self.skipped_steps)})

    def accumulate_gradients(self, batch: UpdateBatch) -> tuple[bool, dict[str, float]]:
        """Micro-batched backward of the batch's loss with this module's settings; statistics summed over ranks."""
        backward = torch.Tensor.backward if self._trainer is None else self.manual_backward
        horizon = self.rollout_config.max_total_tokens
        finite, totals = accumulate_gradients(self.policy, batch, self.loss_config, self.hparams.micro_batch_size,
                                              horizon, backward, self.token_logprobs)  # fmt: skip
        return finite, sum_over_ranks(totals)

    def token_logprobs(self, model, batch: UpdateBatch, rows: slice) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(n, L-1) next-token logprobs and entropies of ``rows`` (``update.token_logprobs``); a hook to override."""
        return token_logprobs(model, batch, rows)

    @rank_zero_only
    def log_update(self, metrics: dict[str, float]) -> None:
        """Write update metrics straight to the loggers, at the step Lightning logs this batch at.

        ``self.log`` would repeat a step metric's last value in later batches that do not log it
        (here: steps without signal, which take no update), and show a loss that was never computed.
        """
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self._logged_step())

    def _logged_step(self) -> int:
        # Training batches so far, which Lightning logs ``self.log`` values at and checkpoints. Seeding by
        # batch, not optimizer step: a step without signal takes no optimizer step, and must not replay
        # the previous step's sampling noise. Lightning keeps this count only as a private attribute.
        return self.trainer.fit_loop.epoch_loop._batches_that_stepped
