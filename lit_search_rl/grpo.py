"""The GRPO LightningModule: rollouts with search, outcome rewards, group advantages, clipped updates.

One training step is one candidate batch of questions (``oversample * batch_size`` of them):

1. rollout: K trajectories per question, multi-turn with search;
2. reward: the configured reward of each trajectory's answer;
3. classify groups: signal (rewards differ), too easy or too hard (zero variance);
4. pick the effective batch: at most ``batch_size`` signal groups, in draw order;
5. advantages: normalised within each group;
6. update: ``update_epochs`` passes of micro-batched backward and one optimizer step each.

An empty effective batch takes no optimizer step. A non-finite loss skips the step and is
counted. What this module leaves out on purpose: sampling strategies and the recycling pool
(the data module's job) and weight sync into vLLM (the ``VLLMWeightSync`` callback).

Run: ``lit-search-rl fit --config configs/synthetic/grpo.yaml``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from lightning import LightningModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from lit_search_rl.checks import check_grpo_settings
from lit_search_rl.data.eval_data import EvalBatch
from lit_search_rl.data.pool import PoolExhausted
from lit_search_rl.data.qa import QARecord
from lit_search_rl.distributed import (
    all_ranks_true,
    balanced_rows,
    gather_shards,
    rank_and_world,
    shard,
    sum_over_ranks,
)
from lit_search_rl.evaluation.evaluator import EvalConfig, QAEvaluation, scalars
from lit_search_rl.evaluation.results import QuestionResult
from lit_search_rl.fsdp import copy_full_weights, is_sharded, shard_policy
from lit_search_rl.losses import AGGREGATIONS, KL_KINDS, aggregate, group_advantages, kl_penalty, policy_loss
from lit_search_rl.policy import ExportsPolicy, load_policy, load_tokenizer
from lit_search_rl.retrieval.base import EMPTY_RETRIEVER, EmptyRetriever, Retriever
from lit_search_rl.rewards import INVALID_REWARDS, InvalidReward, get_reward, score_answer
from lit_search_rl.rollout.agent import AgentLoop, RolloutConfig, Trajectory, context_length_of
from lit_search_rl.rollout.encoding import pad_batch
from lit_search_rl.rollout.engine import GenerationEngine, SamplingConfig
from lit_search_rl.rollout.hf_engine import HFEngine
from lit_search_rl.rollout.torch_engine import TorchEngine, unsupported_reason
from lit_search_rl.rollout.vllm_engine import VLLMConfig, VLLMEngine
from lit_search_rl.timing import PhaseTimer

GroupKind = Literal["signal", "too_easy", "too_hard"]
ENGINES = ("torch", "hf", "vllm")

STEP_PHASES = ("generate", "retrieve", "rollout", "reward", "pool", "update_batch", "forward_backward", "optimizer",
               "logging")  # fmt: skip
"""Phases of a training step logged as ``time/<phase>``: ``rollout`` is the agent loop's own work besides
generating and retrieving, ``pool`` the strategy's draws and reports, ``update_batch`` building the padded
update tensors, ``logging`` the metric calls."""


@dataclass
class UpdateBatch:
    """Tensors of the trajectories that are trained on. N trajectories, L = prompt + response width."""

    input_ids: torch.Tensor  # (N, L) right-padded
    attention_mask: torch.Tensor  # (N, L)
    loss_mask: torch.Tensor  # (N, L) 1 on the model's own response tokens
    advantages: torch.Tensor  # (N,)
    # (N, L-1) logprob of token t+1 at position t before the update; None: on-policy, the ratio is 1.
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None  # (N, L-1)
    # Loss normalisers of the whole effective batch, over all ranks (None: this batch's own):
    # trainable tokens, and sequences with at least one trainable token.
    num_tokens: float | None = None
    num_seqs: int | None = None
    # Data-parallel gradients are averaged over ranks; each rank's loss is scaled back up so the
    # averaged gradient is the gradient of the whole batch's loss.
    loss_scale: float = 1.0


def open_retriever(spec: str) -> Retriever:
    """An index folder, the URL of a Search-R1-compatible retrieval server, or ``empty://`` for a retriever that
    returns no passage (a no-search control)."""
    if spec == EMPTY_RETRIEVER:
        return EmptyRetriever()
    if spec.startswith(("http://", "https://")):
        from lit_search_rl.retrieval.http_client import HTTPRetriever

        return HTTPRetriever(spec)
    from lit_search_rl.retrieval.index import load_retriever

    return load_retriever(Path(spec))


def classify_group(rewards: list[float]) -> GroupKind:
    """Signal when the rewards differ; otherwise too easy (all rewarded) or too hard (none).

    Rewards must be finite: a NaN compares false with everything, so a group holding one would be
    classified by where the NaN stands (``score`` turns them into an error or a counted 0 first).
    """
    if not all(math.isfinite(r) for r in rewards):
        raise ValueError(f"classify_group needs finite rewards (got {rewards})")
    if max(rewards) != min(rewards):
        return "signal"
    return "too_easy" if rewards[0] > 0 else "too_hard"


class GRPOModule(ExportsPolicy, LightningModule):
    """GRPO for search agents, with manual optimization.

    Args:
        model: Folder or Hub name of the policy (``AutoModelForCausalLM``), e.g. the SFT export.
        retriever: Index folder (``lit-search-rl index``) or URL of a Search-R1 retrieval server; ``empty://`` for
            a retriever that returns no passage (the no-search control); unset when a ``RetrieverService`` callback
            provides it.
        dtype: Parameter dtype.
        group_size: Rollouts per question (K); at least 2, or no group has a baseline.
        batch_size: Signal groups per update (B).
        oversample: Candidate questions drawn per step, as a multiple of ``batch_size`` (k).
        reward: Reward name from the registry (``em``, ``f1``, ``cover_em``), or ``module:function`` of your own.
        invalid_reward: What a NaN or infinite reward does: ``error`` stops training with a message naming the
            question and the answer; ``zero`` scores it 0 and counts it in ``train/invalid_rewards``.
        advantage_scale: ``group`` (GRPO), ``batch``, or ``none`` (Dr. GRPO).
        loss_agg: Loss aggregation: token-mean, seq-mean-token-mean, seq-mean-token-sum, seq-mean-token-sum-norm.
        clip_low: Lower clip of the ratio, 1 - clip_low.
        clip_high: Upper clip of the ratio, 1 + clip_high (DAPO clip-higher: above clip_low).
        clip_c: Dual-clip bound for negative advantages (> 1), or unset.
        kl_coef: Weight of the KL penalty to the frozen reference policy; 0 loads no reference model.
        kl_estimator: KL estimator: k1, k2 or k3.
        learning_rate: Peak AdamW learning rate.
        warmup_steps: Optimizer steps of linear warm-up.
        weight_decay: AdamW weight decay.
        gradient_clip: Maximum gradient norm; 0 turns clipping off.
        micro_batch_size: Trajectories per forward/backward; must divide ``group_size * batch_size``.
        update_epochs: Passes over each effective batch, with the old logprobs kept from before the first.
            One pass is on-policy (ratio 1), so it needs no separate old-logprob forward.
        gradient_checkpointing: Trade compute for memory in the policy's backward.
        lora_rank: LoRA rank through peft; 0 trains all weights.
        rollout: Agent-loop limits (turns, tokens, queries, documents).
        sampling: Temperature, top-p, top-k and seed of rollouts.
        engine: Rollout engine: ``torch`` runs the policy itself in a lean decoding loop (the fast path on
            the CPU; llama, qwen2 and qwen3 models, others fall back to ``hf`` with a notice), ``hf`` with
            transformers' ``generate``, ``vllm`` with a colocated vLLM engine that the ``VLLMWeightSync``
            callback keeps up to date.
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
        advantage_scale: Literal["group", "batch", "none"] = "group",
        loss_agg: str = "token-mean",
        clip_low: float = 0.2,
        clip_high: float = 0.2,
        clip_c: float | None = None,
        kl_coef: float = 0.0,
        kl_estimator: str = "k3",
        learning_rate: float = 1e-6,
        warmup_steps: int = 0,
        weight_decay: float = 0.0,
        gradient_clip: float = 1.0,
        micro_batch_size: int = 8,
        update_epochs: int = 1,
        gradient_checkpointing: bool = False,
        lora_rank: int = 0,
        rollout: RolloutConfig | None = None,
        sampling: SamplingConfig | None = None,
        engine: Literal["torch", "hf", "vllm"] = "torch",
        vllm: VLLMConfig | None = None,
        export_dir: str | None = None,
        evaluation: EvalConfig | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.rollout_config = rollout or RolloutConfig()
        self.sampling = sampling or SamplingConfig()
        self.vllm_config = vllm or VLLMConfig()
        self.evaluation = QAEvaluation(evaluation or EvalConfig())
        self._check_settings()
        self.automatic_optimization = False
        self.reward_fn = get_reward(reward)
        self.tokenizer = load_tokenizer(model)
        self.policy = None
        self.reference = None
        self.retriever: Retriever | None = None
        self.rollout_engine: VLLMEngine | None = None  # the colocated vLLM engine, when engine is vllm
        self._rollout_copy: torch.nn.Module | None = None  # generates for a sharded policy (torch, hf engines)
        self._told_fallback = False  # the torch engine's fallback notice is given once
        self.skipped_steps = 0
        self.timer = PhaseTimer()  # where each training step's time goes
        self.step_rollouts = 0  # trajectories rolled out in the current training step
        self.step_invalid_rewards = 0  # non-finite rewards scored 0 in the current training step
        self.last_evaluation: dict[str, dict[str, float]] | None = None  # summary of the latest evaluation
        self.last_results: list[QuestionResult] = []  # its questions one by one (every rank holds them all)
        self.last_predictions: Path | None = None  # the predictions file it wrote (rank zero)

    # -- set-up -----------------------------------------------------------------------------

    def _check_settings(self) -> None:
        h = self.hparams
        check_grpo_settings(h)  # sizes, clipping, KL weight, reward: also run on the raw config before imports
        if h.loss_agg not in AGGREGATIONS:
            raise ValueError(f"model.loss_agg must be one of {', '.join(AGGREGATIONS)} (got {h.loss_agg!r})")
        if h.invalid_reward not in INVALID_REWARDS:
            raise ValueError(f"model.invalid_reward must be error or zero (got {h.invalid_reward!r})")
        if h.kl_estimator not in KL_KINDS:
            raise ValueError(f"model.kl_estimator must be one of {', '.join(KL_KINDS)} (got {h.kl_estimator!r})")
        self.rollout_config.validate()
        self.sampling.validate()
        if h.engine not in ENGINES:
            raise ValueError(f"model.engine must be one of {', '.join(ENGINES)} (got {h.engine!r})")
        if h.engine == "vllm":
            self.vllm_config.validate()

    @property
    def candidates_per_step(self) -> int:
        """Questions the data module should draw per step: k * B."""
        return self.hparams.oversample * self.hparams.batch_size

    def configure_model(self) -> None:
        if self.policy is not None:
            return
        self.policy = load_policy(self.hparams.model, self.hparams.dtype)
        if self.hparams.kl_coef > 0:
            self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)
        if self.hparams.lora_rank > 0:
            self.policy = _with_lora(self.policy, self.hparams.lora_rank)
        if self.hparams.gradient_checkpointing:
            self.policy.gradient_checkpointing_enable()
        if self.device_mesh is not None:  # ModelParallelStrategy: FSDP2 over the data-parallel ranks
            mesh = self.device_mesh["data_parallel"]
            if self.reference is not None:
                shard_policy(self.reference, mesh)
            shard_policy(self.policy, mesh)
        self.policy.train()

    def setup(self, stage: str) -> None:
        if self.hparams.engine == "vllm" and self.rollout_engine is None:
            self._require_weight_sync(stage)
            # After the strategy set up the process group: each rank gets its own colocated engine.
            self.rollout_engine = VLLMEngine(
                self.hparams.model, self.vllm_config, max_model_len=self.rollout_config.max_total_tokens
            )
        if self.retriever is None:  # a RetrieverService callback may have set it already
            if self.hparams.retriever is None:
                raise ValueError("model.retriever is not set and no RetrieverService callback provides one")
            self.retriever = open_retriever(self.hparams.retriever)

    def _require_weight_sync(self, stage: str) -> None:
        from lit_search_rl.callbacks.weight_sync import VLLMWeightSync

        if stage == "fit" and not any(isinstance(c, VLLMWeightSync) for c in self.trainer.callbacks):
            raise ValueError("model.engine is vllm but trainer.callbacks has no VLLMWeightSync: rollouts would keep "
                             "sampling from the initial weights")  # fmt: skip

    def teardown(self, stage: str) -> None:
        if self.retriever is not None:
            self.retriever.close()
            self.retriever = None

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.hparams.learning_rate, weight_decay=self.hparams.weight_decay)
        warmup = self.hparams.warmup_steps
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / max(1, warmup)))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def transfer_batch_to_device(self, batch: list[QARecord] | int, device: torch.device, dataloader_idx: int):
        return batch  # question records stay on the host; only update tensors go to the device

    # -- the step ---------------------------------------------------------------------------

    def training_step(self, batch: list[QARecord] | int, batch_idx: int) -> None:
        start = time.perf_counter()
        self.timer.reset()
        self.step_rollouts = 0
        self.step_invalid_rewards = 0
        sampled = self.sample(batch)
        if self.rollout_engine is not None:
            self.rollout_engine.sleep()  # hand the engine's memory to the update (with sleep mode on)
        if sampled is None:
            return
        groups, rewards, kinds, chosen = sampled
        with self.timer("logging"):
            self.log_rollouts(groups, rewards, kinds, chosen)
        if chosen:
            with self.timer("update_batch"):
                batch = self.make_update_batch(groups, rewards, chosen)
            self.update(batch)
        self.log_step_time(time.perf_counter() - start)

    def sample(self, batch: list[QARecord] | int) -> tuple[list, list, list, list[int]] | None:
        """Roll out, score and classify the step's questions, and pick the effective batch.

        With a recycling data module its strategy draws from the pool (possibly over several
        rounds) and picks; with a plain list of questions the first B signal groups are used.
        Returns None when the pool is exhausted under the ``stop`` policy (training ends).
        """
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if not hasattr(datamodule, "sampling_step"):
            groups = self.rollout(batch)
            rewards = self.score(groups, batch)
            kinds = [classify_group(r) for r in rewards]
            return groups, rewards, kinds, self.pick_effective_batch(kinds)
        drawn: list[tuple[list[Trajectory], list[float], GroupKind]] = []

        def outcomes_of(questions: list[QARecord], indices) -> list[GroupKind]:
            groups = self.rollout(questions)
            rewards = self.score(groups, questions)
            drawn.extend(zip(groups, rewards, [classify_group(r) for r in rewards], strict=True))
            return [kind for *_, kind in drawn[-len(questions) :]]

        try:
            with self.timer("pool"):  # the strategy's draws, reports and picks; rollouts time themselves
                result = datamodule.sampling_step(outcomes_of)
        except PoolExhausted as e:
            rank_zero_info(f"stopping: {e}")
            self.trainer.should_stop = True
            return None
        position = {pool_index: n for n, pool_index in enumerate(result.drawn)}
        with self.timer("logging"):
            self.log_pool(datamodule.pool, result)
        groups, rewards, kinds = (list(x) for x in zip(*drawn, strict=True))
        return groups, rewards, kinds, [position[i] for i in result.chosen]

    def log_pool(self, pool, result) -> None:
        """The pool's ``pool/*`` and recycling ``train/*`` tags."""
        chosen = max(1, len(result.chosen))
        self.log("pool/active", float(pool.active))
        self.log("pool/consumed", float(pool.consumed))
        self.log("train/recycled_fraction", result.recycled / chosen)
        self.log("train/recovery_fraction", result.flips["recovery"] / max(1, len(result.drawn)))
        self.log("train/drift_fraction", result.flips["drift"] / max(1, len(result.drawn)))

    def rollout(self, questions: list[QARecord]) -> list[list[Trajectory]]:
        """K trajectories per question, grouped by question, in the order of ``questions``.

        Every rank holds the same questions; each rolls out its shard as one batched agent loop,
        and the groups are gathered so every rank returns all of them.
        """
        with self.timer("rollout"):
            return self._rollout(questions, self.hparams.group_size, self._step_sampling)

    def _rollout(
        self, questions: list[QARecord], k: int, sampling: Callable[[int], SamplingConfig]
    ) -> list[list[Trajectory]]:
        rank, world = rank_and_world()
        mine = [questions[i] for i in shard(questions, rank, world)]
        engine = self._engine(sampling(rank))
        agent = AgentLoop(engine, self.retriever, self.tokenizer, self.rollout_config,
                          context_length=context_length_of(self.policy))  # fmt: skip
        flat = agent.rollout([q.question for q in mine for _ in range(k)])
        # The agent loop's own bookkeeping (parsing, token ids) stays booked as "rollout".
        self.timer.add("generate", agent.stats.generate_seconds, within="rollout")
        self.timer.add("retrieve", agent.stats.retrieve_seconds, within="rollout")
        return gather_shards([flat[i * k : (i + 1) * k] for i in range(len(mine))], len(questions))

    def _engine(self, sampling: SamplingConfig) -> GenerationEngine:
        if self.rollout_engine is not None:
            self.rollout_engine.sampling = sampling
            return self.rollout_engine
        model = self.policy
        if is_sharded(self.policy):
            # A sharded policy cannot generate rank by rank (each forward is a collective), so an
            # unsharded copy gets the current weights and generates instead.
            if self._rollout_copy is None:
                self._rollout_copy = load_policy(self.hparams.model, self.hparams.dtype).to(self.device).eval()
            copy_full_weights(self.policy, self._rollout_copy)
            model = self._rollout_copy
        if self.hparams.engine == "torch":
            reason = unsupported_reason(model)
            if reason is None:
                return TorchEngine(model, self.tokenizer, sampling)
            if not self._told_fallback:
                rank_zero_info(f"model.engine torch falls back to hf: {reason}")
                self._told_fallback = True
        return HFEngine(model, self.tokenizer, sampling)

    def _step_sampling(self, rank: int = 0) -> SamplingConfig:
        s = self.sampling
        # Seeded by training batch, not optimizer step: a step without signal takes no optimizer
        # step, and must not replay the previous step's sampling noise. The count is checkpointed.
        step = self.trainer.fit_loop.epoch_loop._batches_that_stepped if self._trainer is not None else 0
        seed = None if s.seed is None else s.seed + 1000 * step + 7919 * rank
        return SamplingConfig(s.temperature, s.top_p, s.top_k, seed)

    def score(self, groups: list[list[Trajectory]], questions: list[QARecord]) -> list[list[float]]:
        """The configured reward of each trajectory, grouped like ``groups``.

        A reward that raises or returns no number stops training with a ``RewardError`` naming the
        reward and the question; a non-finite one too, or is scored 0 and counted with
        ``invalid_reward: zero``. Raising here, before any pool report, leaves the drawn queries active.
        """
        h = self.hparams
        rewards = []
        with self.timer("reward"):
            for group, q in zip(groups, questions, strict=True):
                row = []
                for t in group:
                    value, invalid = score_answer(self.reward_fn, h.reward, t.answer, q.golden_answers, q.id,
                                                  h.invalid_reward)  # fmt: skip
                    self.step_invalid_rewards += invalid
                    row.append(value)
                rewards.append(row)
        return rewards

    def pick_effective_batch(self, kinds: list[GroupKind]) -> list[int]:
        """Indices of at most ``batch_size`` signal groups, in draw order."""
        return [i for i, kind in enumerate(kinds) if kind == "signal"][: self.hparams.batch_size]

    def make_update_batch(
        self, groups: list[list[Trajectory]], rewards: list[list[float]], chosen: list[int]
    ) -> UpdateBatch:
        """Padded tensors and group-normalised advantages of this rank's share of the chosen groups.

        Advantages and loss normalisers come from the whole effective batch. With several ranks
        each takes every world-th trajectory and pads with fully masked rows to the same count.
        """
        trajectories = [t for i in chosen for t in groups[i]]
        flat_rewards = torch.tensor([r for i in chosen for r in rewards[i]], dtype=torch.float32)
        group_ids = torch.tensor([i for i in chosen for _ in groups[i]])
        advantages = group_advantages(flat_rewards, group_ids, scale=self.hparams.advantage_scale)
        examples = [{"input_ids": t.prompt_ids + t.response_ids, "loss_mask": [0] * len(t.prompt_ids) + t.loss_mask}
                    for t in trajectories]  # fmt: skip
        num_tokens = float(sum(sum(e["loss_mask"][1:]) for e in examples))
        # The seq-mean modes count only sequences with a trainable token (veRL's agg_loss), so the
        # fully masked filler rows below need no special case.
        num_seqs = sum(any(e["loss_mask"][1:]) for e in examples)
        rank, world = rank_and_world()
        rows, padding = balanced_rows(len(examples), rank, world)
        filler = {"input_ids": examples[0]["input_ids"], "loss_mask": [0] * len(examples[0]["input_ids"])}
        local = [examples[i] for i in rows] + [filler] * padding
        local_advantages = torch.cat([advantages[rows], torch.zeros(padding)])
        padded = {k: v.to(self.device) for k, v in pad_batch(local, self.tokenizer.pad_token_id).items()}
        return UpdateBatch(
            padded["input_ids"], padded["attention_mask"], padded["loss_mask"], local_advantages.to(self.device),
            num_tokens=num_tokens, num_seqs=num_seqs, loss_scale=float(world),
        )  # fmt: skip

    def token_logprobs(self, model, batch: UpdateBatch, rows: slice) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(n, L-1) logprob of each next token, and (n, L-1) entropy of each next-token distribution.

        The entropy (a full pass over the vocabulary) is only computed for the training pass; the
        frozen old / reference logprobs, computed without gradients, return None for it.
        """
        logits = model(input_ids=batch.input_ids[rows], attention_mask=batch.attention_mask[rows]).logits[:, :-1]
        logp = logits.float().log_softmax(-1)  # (n, L-1, V)
        chosen = logp.gather(-1, batch.input_ids[rows, 1:, None])[..., 0]
        entropy = -(logp.exp() * logp).sum(-1).detach() if torch.is_grad_enabled() else None
        return chosen, entropy

    def update(self, batch: UpdateBatch) -> None:
        """``update_epochs`` optimizer steps over the batch; a step with a non-finite loss or gradient is skipped."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        with self.timer("forward_backward"):
            # "Old" logprobs come from the policy before this batch's first update (PPO's pi_old).
            # With one pass the policy being trained is still pi_old: the training forward's own
            # detached logprobs are exactly pi_old's, so the extra no-grad forward is skipped.
            if self.hparams.update_epochs > 1:
                batch.old_logprobs = self._frozen_logprobs(self.policy, batch)
            if self.reference is not None:
                batch.ref_logprobs = self._frozen_logprobs(self.reference, batch)
        for _ in range(self.hparams.update_epochs):
            with self.timer("forward_backward"):
                optimizer.zero_grad(set_to_none=True)
                finite, totals = self.accumulate_gradients(batch)
            # Every rank must take (or skip) the same step, or their weights part ways.
            if not all_ranks_true(finite and self._gradients_finite()):
                # Nothing of a non-finite step reaches the weights (or a checkpoint).
                optimizer.zero_grad(set_to_none=True)
                self.skipped_steps += 1
                continue
            with self.timer("optimizer"):
                if self.hparams.gradient_clip > 0:
                    self.clip_gradients(
                        optimizer, gradient_clip_val=self.hparams.gradient_clip, gradient_clip_algorithm="norm"
                    )
                optimizer.step()
                scheduler.step()
            with self.timer("logging"):
                self.log_update({f"train/{name}": value for name, value in totals.items()})
        with self.timer("logging"):
            self.log_update({"train/skipped_steps": float(self.skipped_steps)})

    @rank_zero_only
    def log_update(self, metrics: dict[str, float]) -> None:
        """Write update metrics straight to the loggers, at the step Lightning logs this batch at.

        ``self.log`` would repeat a step metric's last value in later batches that do not log it
        (here: steps without signal, which take no update), and show a loss that was never computed.
        """
        step = self.trainer.fit_loop.epoch_loop._batches_that_stepped
        for logger in self.loggers:
            logger.log_metrics(metrics, step=step)

    def accumulate_gradients(self, batch: UpdateBatch) -> tuple[bool, dict[str, float]]:
        """Micro-batched backward of the whole batch's loss; returns (loss finite, statistics).

        Micro-batch losses are normalised by whole-batch counts, so their gradients add up to
        the gradient of the batch loss whatever ``micro_batch_size`` is. A non-finite micro-batch
        loss still goes through backward: every rank must run the same backward passes, since
        each one all-reduces gradients; the non-finite gradient then makes the step skip.
        """
        h = self.hparams
        n = batch.input_ids.shape[0]
        mask = batch.loss_mask[:, 1:]  # (N, L-1): token t+1 is predicted at position t
        num_tokens = mask.sum().item() if batch.num_tokens is None else batch.num_tokens
        num_seqs = int((mask.sum(-1) > 0).sum()) if batch.num_seqs is None else batch.num_seqs
        norms = {"num_tokens": num_tokens, "num_seqs": num_seqs, "horizon": self.rollout_config.max_total_tokens}
        totals = {"loss": 0.0, "kl": 0.0, "entropy": 0.0, "clip_fraction": 0.0}
        finite = True
        for i in range(0, n, h.micro_batch_size):
            rows = slice(i, min(n, i + h.micro_batch_size))
            logprobs, entropy = self.token_logprobs(self.policy, batch, rows)
            old = logprobs.detach() if batch.old_logprobs is None else batch.old_logprobs[rows]
            loss, stats = policy_loss(logprobs, old, batch.advantages[rows], mask[rows],
                                      h.clip_low, h.clip_high, h.clip_c, h.loss_agg, **norms)  # fmt: skip
            if batch.ref_logprobs is not None:
                kl = aggregate(kl_penalty(logprobs, batch.ref_logprobs[rows], h.kl_estimator), mask[rows], h.loss_agg,
                               **norms)  # fmt: skip
                loss = loss + h.kl_coef * kl
                totals["kl"] += kl.item()
            finite = finite and bool(torch.isfinite(loss))
            self._backward(loss * batch.loss_scale)
            totals["loss"] += loss.item()
            totals["entropy"] += (entropy * mask[rows]).sum().item() / max(1, num_tokens)
            totals["clip_fraction"] += stats["clip_fraction"].item() * mask[rows].sum().item() / max(1, num_tokens)
        return finite, sum_over_ranks(totals)

    def _backward(self, loss: torch.Tensor) -> None:
        if self._trainer is None:  # used on its own (tests, notebooks)
            loss.backward()
        else:
            self.manual_backward(loss)

    @torch.no_grad()
    def _frozen_logprobs(self, model, batch: UpdateBatch) -> torch.Tensor:
        size, n = self.hparams.micro_batch_size, batch.input_ids.shape[0]
        return torch.cat([self.token_logprobs(model, batch, slice(i, i + size))[0] for i in range(0, n, size)])

    def _gradients_finite(self) -> bool:
        return all(p.grad is None or torch.isfinite(p.grad).all() for p in self.policy.parameters())

    # -- evaluation -------------------------------------------------------------------------

    def validation_step(self, batch: EvalBatch, batch_idx: int) -> None:
        """One batch of one evaluation dataset: a greedy rollout per question, and samples for pass@k."""
        dataset, questions = batch
        greedy = [g[0] for g in self._rollout(questions, 1, lambda rank: SamplingConfig(temperature=0.0))]
        samples = None
        if self.evaluation.config.n_samples:
            cfg = self.evaluation.config
            seed = cfg.seed + 1000 * batch_idx  # repeatable, and the same whatever ran before

            def sampling(rank: int) -> SamplingConfig:
                return SamplingConfig(cfg.temperature, seed=seed + 7919 * rank)

            samples = self._rollout(questions, cfg.n_samples, sampling)
        texts = None
        if self.evaluation.config.predictions and self.evaluation.config.trajectories:
            texts = [self.tokenizer.decode(t.response_ids, skip_special_tokens=True) for t in greedy]
        self.evaluation.add(dataset, questions, greedy, samples, texts)

    def test_step(self, batch: EvalBatch, batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_validation_epoch_start(self) -> None:
        self.evaluation.reset()

    def on_test_epoch_start(self) -> None:
        self.evaluation.reset()

    def on_validation_epoch_end(self) -> None:
        self._finish_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._finish_evaluation("test")

    def _finish_evaluation(self, stage: str) -> None:
        """Log ``<stage>/<dataset>/<metric>`` and write the results tables and the predictions into the log folder."""
        if not self.evaluation.results:
            return
        summary = self.evaluation.finish()
        self.last_evaluation, self.last_results = summary, list(self.evaluation.results)
        for name, value in scalars(stage, summary).items():
            self.log(name, value, prog_bar=name == f"{stage}/avg/em")
        if self.evaluation.config.tables or self.evaluation.config.predictions:
            folder = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # a collective: every rank asks
            self._write_results(summary, folder, f"{stage}-step{self.global_step}")

    @rank_zero_only
    def _write_results(self, summary: dict, folder: Path, stem: str) -> None:
        for path in self.evaluation.write(summary, folder, stem):
            if path.suffix == ".jsonl":
                self.last_predictions = path
            if path.suffix != ".csv":  # the Markdown table and the predictions; the CSV sits beside the table
                label = "predictions" if path.suffix == ".jsonl" else "evaluation results"
                rank_zero_info(f"{label}: {path}")

    # -- logging and saving -----------------------------------------------------------------

    def log_rollouts(self, groups: list[list[Trajectory]], rewards: list[list[float]], kinds: list[GroupKind],
                     chosen: list[int]) -> None:  # fmt: skip
        flat = [t for g in groups for t in g]
        drawn = max(1, len(kinds))
        self.log("train/reward_mean", sum(sum(r) for r in rewards) / max(1, len(flat)), prog_bar=True)
        self.log("train/signal_fraction", kinds.count("signal") / drawn)
        self.log("train/too_easy_fraction", kinds.count("too_easy") / drawn)
        self.log("train/too_hard_fraction", kinds.count("too_hard") / drawn)
        self.log("train/effective_batch_size", float(len(chosen)))
        self.log("train/invalid_rewards", float(self.step_invalid_rewards))
        self.log("train/response_length", sum(sum(t.loss_mask) for t in flat) / max(1, len(flat)))
        self.log("train/num_searches", sum(t.num_searches for t in flat) / max(1, len(flat)))
        self.log("train/rollouts_per_update", float(len(flat)))
        self.step_rollouts = len(flat)  # read by the RolloutBudget callback

    def log_step_time(self, seconds: float) -> None:
        """``train/step_time`` and its breakdown ``time/<phase>``; ``time/other`` is the unbooked rest.

        Every phase is logged every step (0 when absent), so no tag repeats a stale value.
        """
        self.log("train/step_time", seconds)
        booked = dict(self.timer.seconds)
        for phase in STEP_PHASES:
            self.log(f"time/{phase}", booked.get(phase, 0.0))
        self.log("time/other", seconds - sum(booked.values()))


def _with_lora(model, rank: int):
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:
        raise ImportError("model.lora_rank > 0 needs the peft package: pip install 'lit-search-rl[lora]'") from e
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", lora_dropout=0.0)
    return get_peft_model(model, config)


__all__ = ["GRPOModule", "UpdateBatch", "classify_group"]
