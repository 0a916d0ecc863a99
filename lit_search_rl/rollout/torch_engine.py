"""A lean decoding loop over the policy's own modules: the fast rollout engine on the CPU.

``HFEngine`` spends most of a decode step outside the model's arithmetic: ``generate`` rebuilds
masks, grows the KV cache by concatenation and runs generic bookkeeping every token, and each agent
turn computes the whole context again. This engine keeps what decides *what* is generated from
transformers and replaces the loop around it:

- the forward pass calls the decoder's own modules in their order (embedding, rotary embedding,
  norms, projections with any LoRA adapters, MLP, head) for the pre-norm llama, qwen2 and qwen3
  family; others fall back to ``HFEngine``;
- sampling draws from the distribution of transformers' own logits warpers (temperature, top-k,
  top-p, in ``generate``'s order); stop strings are transformers' ``StopStringCriteria`` on the
  same left-padded ids, so rows stop exactly where ``generate`` stops them;
- the KV cache is allocated once per call and written in place; positions count from each row's
  first real token, as in ``generate``;
- work is not repeated: rows with the same prompt (the K rollouts of a question) share one forward
  pass over it, a prompt that extends a sequence of the previous call (the agent loop's next turn)
  takes that sequence's keys and values and computes only its new tokens, rows whose numbers of
  new tokens differ a lot go through the model in separate groups instead of padding, and once half
  of a batch has stopped the other rows decode on in a smaller cache, without reading the padding
  only the stopped rows needed;
- a decode step of a small plain float32 decoder (no adapters, no norms on q and k) runs ``FusedDecoder``:
  the same arithmetic in a third fewer kernels (q, k and v in one product, gate and up in another);
  the stop-string criteria run only on steps where some row's new token can end a stop string.

Seeding, budget groups, batch splitting and the finish reasons are ``HFEngine``'s. Decoding runs on
``threads`` threads (1 by default): a decode step is hundreds of small kernels, and waking a second
OpenMP thread for each costs more than it brings (README, "CPU threads"); the prompts' forward pass
is large enough to use the process's threads.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation import (
    LogitsProcessorList,
    StopStringCriteria,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from lit_search_rl.rollout.decoder import FusedDecoder, Rope, forward_modules
from lit_search_rl.rollout.engine import Generation, SamplingConfig
from lit_search_rl.rollout.hf_engine import HFEngine
from lit_search_rl.rollout.slot_cache import PrefixIndex, SlotCache

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
"""Pre-norm decoders whose layers ``forward_modules`` calls module by module (full attention)."""


def unsupported_reason(model: torch.nn.Module) -> str | None:
    """Why ``TorchEngine`` cannot run ``model`` (None when it can): the model type or attention it lacks."""
    base = causal_lm_of(model)
    config = getattr(base, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} is not one of {', '.join(SUPPORTED_MODEL_TYPES)}"
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
        return "the model has sliding-window attention layers"
    if getattr(config, "_attn_implementation", "sdpa") not in ("sdpa", "eager"):
        return f"attention implementation {config._attn_implementation!r} is not sdpa or eager"
    return None


def causal_lm_of(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers causal LM inside ``model`` (peft's wrapper keeps its adapters in it)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


class StopMatcher:
    """transformers' ``StopStringCriteria``, asked only when a row's last token can end a stop string.

    The criteria match a stop string only when its last character sits at the end of the last token
    (the table the criteria build gives each token the stop-string endings it can hold), so a step whose
    new tokens hold none (almost every step) is answered from that table with one lookup, and the
    answer is the same.
    """

    def __init__(self, criteria: StopStringCriteria) -> None:
        self.criteria = criteria
        width = criteria.max_valid_positions * criteria.num_stop_strings
        self.can_end = (criteria.embedding_vec[:, width:-1] > 0).any(-1)  # (V + 1,): the last entry is out-of-vocab ids

    def __call__(self, ids: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """(B,) whether each row of (B, T) ``ids``, whose last column is ``last``, ends with a stop string."""
        self.can_end = self.can_end.to(last.device)
        if not self.can_end[last.clamp(max=len(self.can_end) - 1)].any():
            return torch.zeros_like(last, dtype=torch.bool)
        return self.criteria(ids, None)


def weight_versions(model: torch.nn.Module) -> tuple[int, ...]:
    """The version counters of the model's parameters: any in-place update (an optimizer step) moves them."""
    return (id(model), *(p._version for p in model.parameters()))


class TorchEngine(HFEngine):
    """Batched generation with the policy's forward in a decoding loop of its own (see the module docstring).

    Args:
        model: the causal LM (a supported type, see ``unsupported_reason``; peft-wrapped is fine).
        tokenizer: its tokenizer (for stop strings and padding).
        sampling: temperature, top-p, top-k and seed.
        max_batch_size: rows per decoding loop; larger batches are split.
        threads: torch threads while decoding (restored afterwards); None keeps the process's setting.
        prefill_threads: torch threads for the prompt's forward pass; None keeps the process's setting.
        reuse_prefixes: keep each call's keys and values, so that a prompt of the next call that extends
            one of its sequences (the agent loop's next turn) computes only its new tokens. Kept only
            while the weights are unchanged (their version counters), and for one call.
        group_cost: the cost of one more forward pass over new tokens, in tokens: rows with very
            different numbers of new tokens go through the model in separate groups when the
            padding saved is worth more.
        min_compact_rows: a batch of at least this many rows decodes on with only its unfinished rows
            once half of them have stopped.
        fused_max_parameters: models with at most this many parameters decode with ``FusedDecoder``, whose
            stacked weights are copies; a larger model's step is bound by reading its weights rather than by
            launching kernels, so it keeps the module-by-module step and its memory (None: no limit).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        sampling: SamplingConfig | None = None,
        max_batch_size: int = 64,
        threads: int | None = 1,
        prefill_threads: int | None = None,
        reuse_prefixes: bool = True,
        group_cost: int = 256,
        min_compact_rows: int = 8,
        fused_max_parameters: int | None = 50_000_000,
    ) -> None:
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"TorchEngine cannot run this model: {reason}")
        super().__init__(model, tokenizer, sampling, max_batch_size)
        self.threads = threads
        self.prefill_threads = prefill_threads
        self.reuse_prefixes = reuse_prefixes
        self.group_cost = group_cost
        self.min_compact_rows = min_compact_rows
        self.fused_max_parameters = fused_max_parameters
        self._kept = self._previous = PrefixIndex()
        self._weights: tuple[int, ...] = ()
        self.warpers = self._warpers()
        self._stops: dict[tuple[str, ...], StopMatcher] = {}
        self._fused: tuple[tuple[int, ...], FusedDecoder | None] = ((), None)

    def _stop_matcher(self, stop: tuple[str, ...]) -> StopMatcher:
        """The stop-string matcher for ``stop``, built once per engine: building it reads the vocabulary."""
        if stop not in self._stops:
            self._stops[stop] = StopMatcher(StopStringCriteria(self.tokenizer, list(stop)))
        return self._stops[stop]

    def _weight_key(self) -> tuple[int, ...]:
        """What identifies the current weights: kept keys and values and fused weights are reused only under it."""
        return weight_versions(self.model)

    def _fused_decoder(self, model: PreTrainedModel) -> FusedDecoder | None:
        """The decode step's fused weights for the current weights (built again after they change), or None."""
        if self._fused[0] != self._weights:
            limit, size = self.fused_max_parameters, sum(p.numel() for p in model.parameters())
            self._fused = (self._weights, FusedDecoder.of(model) if limit is None or size <= limit else None)
        return self._fused[1]

    def _warpers(self) -> LogitsProcessorList:
        # The warpers generate() builds for do_sample, in its order; an inactive setting adds none.
        s, warpers = self.sampling, LogitsProcessorList()
        if s.temperature > 0 and s.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(s.temperature))
        if s.temperature > 0 and s.top_k > 0:
            warpers.append(TopKLogitsWarper(s.top_k))
        if s.temperature > 0 and s.top_p < 1.0:
            warpers.append(TopPLogitsWarper(s.top_p))
        return warpers

    def generate(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: Sequence[int], stop: Sequence[str]
    ) -> list[Generation]:
        threads = torch.get_num_threads()
        weights = self._weight_key()
        # Sequences of the previous call can be continued only with the weights that computed them.
        self._previous = self._kept if self.reuse_prefixes and weights == self._weights else PrefixIndex()
        self._kept, self._weights = PrefixIndex(), weights
        # A mixed-precision training step runs under autocast; generation keeps the model's own dtype, so that the
        # cache holds what the model computes and logprobs equal a teacher-forced forward in that dtype.
        try:
            with torch.autocast(causal_lm_of(self.model).device.type, enabled=False):
                return super().generate(prompts, max_new_tokens, stop)
        finally:
            self._previous = PrefixIndex()
            torch.set_num_threads(threads)

    @torch.no_grad()
    def _generate(self, prompts: list[Sequence[int]], budget: int, stop: Sequence[str]) -> list[Generation]:
        if budget <= 0:
            return [Generation([], [], "length") for _ in prompts]
        model = causal_lm_of(self.model)
        input_ids, attention_mask = self._left_padded(prompts)
        self._seed_call()
        device, dtype = model.device, model.dtype
        rows, width = input_ids.shape
        # ids: left-padded prompts then the new tokens, as generate's (stop strings are matched on it);
        # cache slots follow the same layout, so row r's position p sits at slot p + offset[r].
        ids = torch.full((rows, width + budget), self.pad_id, dtype=torch.long, device=device)  # (B, T + N)
        ids[:, :width] = input_ids.to(device)
        lengths = attention_mask.sum(-1).to(device)  # (B,)
        offset = width - lengths  # (B,)
        cache = SlotCache(model.config, rows, width + budget, dtype, device)
        rope = Rope(model, int(lengths.max()) + budget)
        # Prompts that continue a sequence of the previous call take its keys and values and compute
        # only their new tokens (at least the last one, whose logits start the generation).
        # Rows with the same prompt (the K rollouts of a question) share one forward pass over it.
        reused, first_row = [0] * rows, {}
        for row, prompt in enumerate(prompts):
            if first_row.setdefault(tuple(prompt), row) != row:
                continue
            match = self._previous.longest_prefix(prompt)
            if match is not None:
                reused[row] = min(match.length, len(prompt) - 1)
                cache.copy_from(match, row, width - len(prompt), reused[row])
        copies = {row: first_row[tuple(p)] for row, p in enumerate(prompts) if first_row[tuple(p)] != row}
        slots = torch.arange(width + budget, device=device)
        key_ok = slots[None, :] >= offset[:, None]  # (B, T + N): the prompt's padding is never attended to
        blocked = torch.finfo(dtype).min
        kv_heads = model.config.num_key_value_heads
        open_slots = torch.zeros((rows, kv_heads, 1, width + budget), dtype=dtype, device=device)  # (B, KV, 1, T + N)
        open_slots.masked_fill_(~key_ok[:, None, None, :], blocked)
        stop_matcher = self._stop_matcher(tuple(stop)) if stop else None
        eos = torch.tensor(sorted(self.eos_ids), device=device)
        unfinished = torch.ones(rows, dtype=torch.bool, device=device)
        logprobs = torch.zeros((rows, budget), dtype=torch.float32, device=device)  # (B, N)
        if self.prefill_threads is not None:
            torch.set_num_threads(self.prefill_threads)
        logits = torch.empty((rows, model.config.vocab_size), device=device)  # (B, V)
        # The new tokens of rows of similar count go through the model together, padded to the group's most.
        new_tokens = [len(p) - r for p, r in zip(prompts, reused, strict=True)]
        computed = [row for row in range(rows) if row not in copies]
        for group in length_groups([new_tokens[row] for row in computed], self.group_cost):
            group = [computed[i] for i in group]
            index = torch.tensor(group, device=device)
            fresh = max(new_tokens[i] for i in group)
            queries = slots[width - fresh : width]  # (F,)
            # A padding query sees only itself, so that no row of the softmax is empty (NaN).
            visible = (slots[None, None, :width] <= queries[None, :, None]) & key_ok[index, None, :width]
            visible |= slots[None, None, :width] == queries[None, :, None]  # (G, F, T)
            mask = torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill_(~visible, blocked)
            positions = (queries[None, :] - offset[index, None]).clamp(min=0)  # (G, F)
            cache.rows, cache.start, cache.end = index, width - fresh, width
            logits[index] = forward_modules(
                model, ids[index, width - fresh : width], positions, mask[:, None], cache, rope
            )
        cache.rows = slice(None)
        if copies:
            targets, sources = (torch.tensor(x, device=device) for x in zip(*copies.items(), strict=True))
            cache.keys[:, targets, :, :width] = cache.keys[:, sources, :, :width]
            cache.values[:, targets, :, :width] = cache.values[:, sources, :, :width]
            logits[targets] = logits[sources]
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        fused = self._fused_decoder(model)
        # Decoding runs on the rows still unfinished: when half of them have stopped, the others move
        # to a smaller cache (the stopped rows' keys and values stay where they are, for the next turn).
        batch = torch.arange(rows, device=device)  # the prompt row of each decoding row
        home = [(cache, row) for row in range(rows)]  # where each row's keys and values are
        seq, n = ids, 0  # seq: the decoding rows' ids
        while True:
            token, logprobs[batch, n] = self._sample(logits, seq[:, : width + n])
            token = torch.where(unfinished, token, self.pad_id)
            seq[:, width + n] = token
            unfinished &= ~torch.isin(token, eos)
            if stop_matcher is not None:
                unfinished &= ~stop_matcher(seq[:, : width + n + 1], token)
            if seq is not ids:
                ids[batch, width + n] = token
            n += 1
            if n == budget or not unfinished.any():
                break
            if 2 * int(unfinished.sum()) <= len(unfinished) and len(unfinished) >= self.min_compact_rows:
                keep = unfinished.nonzero()[:, 0]
                batch, seq, token, lengths, open_slots = (x[keep] for x in (batch, seq, token, lengths, open_slots))
                unfinished, cache = unfinished[keep], cache.select(keep)
                cache.first = int(width - lengths.max())  # the padding only shorter rows had is not read
                for index, row in enumerate(batch.tolist()):
                    home[row] = (cache, index)
            cache.advance(1)
            positions = lengths + (n - 1)  # (B,)
            mask = open_slots[..., cache.first : width + n]  # (B, KV, 1, S)
            if fused is None:
                logits = forward_modules(model, token[:, None], positions[:, None], mask, cache, rope)
            else:
                logits = fused.step(model, token, positions, mask.reshape(-1, 1, mask.shape[-1]), cache, rope)
        new, chosen = ids[:, width : width + n].cpu(), logprobs[:, :n].cpu()
        generations = [self._row(new[r], chosen[r], budget, stop) for r in range(rows)]
        for row, (prompt, generation) in enumerate(zip(prompts, generations, strict=True)):
            # Every sampled token but the last was fed back, so the cache holds its keys and values.
            fed = [*prompt, *generation.token_ids[:-1]]
            self._kept.add(fed, *home[row], width - len(prompt))
        return generations

    def _sample(self, logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The next token of each row and its logprob under the raw logits (greedy at temperature 0).

        Sampling draws from the distribution ``generate`` samples from (its warpers, in its order) by
        inverting the cumulative distribution: one uniform number per row, where ``torch.multinomial``
        costs many times a decode step's arithmetic on the CPU. Without warpers one softmax gives both
        the distribution and the logprob (the log of the drawn token's probability, equal to the log-softmax
        to float precision): ``logsumexp`` and ``exp`` over the vocabulary cost more than the softmax on
        the CPU.
        """
        if self.sampling.temperature == 0:
            token = logits.argmax(-1)
            return token, (logits.gather(-1, token[:, None]) - logits.logsumexp(-1, keepdim=True))[:, 0]
        if not self.warpers:
            probs = logits.softmax(-1)  # (B, V)
            token = self._draw(probs)
            return token, probs.gather(-1, token[:, None])[:, 0].log()
        normaliser = logits.logsumexp(-1, keepdim=True)  # (B, 1): of the raw logits, before any warper
        token = self._draw(self.warpers(ids, logits).softmax(-1))
        return token, (logits.gather(-1, token[:, None]) - normaliser)[:, 0]

    @staticmethod
    def _draw(probs: torch.Tensor) -> torch.Tensor:
        """One token per row of (B, V) ``probs``: a uniform number per row on the cumulative distribution."""
        cdf = probs.cumsum(-1)  # (B, V)
        draw = torch.rand((len(cdf), 1), device=cdf.device) * cdf[:, -1:]
        return torch.searchsorted(cdf, draw, right=True)[:, 0].clamp_(max=cdf.shape[-1] - 1)


def length_groups(lengths: Sequence[int], group_cost: int) -> list[list[int]]:
    """Indices of ``lengths`` in groups of similar length, so that each group is padded to its own longest.

    A group costs ``group_cost`` (one more forward pass, in tokens) plus its rows times its longest
    length; the cut points of the sorted lengths that minimise the total are found exactly (a small
    dynamic programme: at most a few thousand steps for a batch's rows).
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    best = [0] + [None] * len(order)  # best[j]: the cheapest cost of the first j sorted rows
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for start in range(end):
            cost = best[start] + group_cost + (end - start) * lengths[order[end - 1]]
            if best[end] is None or cost < best[end]:
                best[end], cut[end] = cost, start
    groups, end = [], len(order)
    while end > 0:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]
