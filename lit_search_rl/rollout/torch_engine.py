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
- a decode step of a plain float32 decoder (no adapters, no norms on q and k) runs ``FusedDecoder``:
  the same arithmetic in a third fewer kernels (q, k and v in one product, gate and up in another);
  the stop-string criteria run only on steps where some row's new token can end a stop string.

Seeding, budget groups, batch splitting and the finish reasons are ``HFEngine``'s. Decoding runs on
``threads`` threads (1 by default): a decode step is hundreds of small kernels, and waking a second
OpenMP thread for each costs more than it brings (README, "CPU threads"); the prompts' forward pass
is large enough to use the process's threads.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.generation import (
    LogitsProcessorList,
    StopStringCriteria,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from lit_search_rl.rollout.engine import Generation, SamplingConfig
from lit_search_rl.rollout.hf_engine import HFEngine

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
"""Pre-norm decoders whose layers ``TorchEngine._forward`` calls module by module (full attention)."""


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


class SlotCache:
    """A KV cache allocated once for a whole call and filled in place, one slot per position.

    The model's attention layers call ``update`` with the keys and values of the positions being
    computed; they are written at slots ``[start, end)`` of ``rows`` and the keys of all slots up to
    ``end`` are returned. Shapes: (layers, B, kv_heads, slots, head_dim).
    """

    def __init__(self, config, batch: int, slots: int, dtype: torch.dtype, device: torch.device) -> None:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        shape = (config.num_hidden_layers, batch, config.num_key_value_heads, slots, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.start = self.end = 0
        self.first = 0  # the first slot any row reads: slots before it are padding in every row
        self.rows: slice | torch.Tensor = slice(None)  # the rows the next forward computes

    def advance(self, length: int) -> None:
        """The next forward computes ``length`` positions, written after the ones already cached."""
        self.start, self.end = self.end, self.end + length

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if isinstance(self.rows, slice):  # all rows: views of the cache, no copies
            keys[:, :, self.start : self.end] = key
            values[:, :, self.start : self.end] = value
            return keys[:, :, self.first : self.end], values[:, :, self.first : self.end]
        keys[self.rows, :, self.start : self.end] = key  # a group of rows (prefill): gathered copies
        values[self.rows, :, self.start : self.end] = value
        return keys[self.rows, :, : self.end], values[self.rows, :, : self.end]

    def append(self, layer: int, key: torch.Tensor, value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write one position's (B, KV, d) ``key`` and ``value`` at slot ``start`` of every row.

        Returns the keys and values of the slots read, ``[first, end)``, as (B * KV, slots, d) views.
        """
        keys, values = self.keys[layer], self.values[layer]
        keys[:, :, self.start] = key
        values[:, :, self.start] = value
        batch, kv_heads, _, dim = keys.shape
        read = slice(self.first, self.end)
        return (keys[:, :, read].reshape(batch * kv_heads, -1, dim),
                values[:, :, read].reshape(batch * kv_heads, -1, dim))  # fmt: skip

    def select(self, rows: torch.Tensor) -> SlotCache:
        """A new cache holding only ``rows`` (copies), at the same position."""
        selected = copy.copy(self)
        selected.keys, selected.values = self.keys[:, rows], self.values[:, rows]
        return selected

    def copy_from(self, source: Prefix, row: int, slot: int, length: int) -> None:
        """Copy the first ``length`` positions of ``source`` into ``row`` from ``slot`` on."""
        start = source.slot
        self.keys[:, row, :, slot : slot + length] = source.cache.keys[:, source.row, :, start : start + length]
        self.values[:, row, :, slot : slot + length] = source.cache.values[:, source.row, :, start : start + length]


@dataclass(frozen=True)
class Prefix:
    """A token sequence whose keys and values sit in ``cache``, row ``row``, from slot ``slot`` on."""

    ids: tuple[int, ...]
    cache: SlotCache
    row: int
    slot: int

    @property
    def length(self) -> int:
        return len(self.ids)


class PrefixIndex:
    """The sequences of one ``generate`` call, found again by the longest one a new prompt starts with.

    The agent loop's next turn extends each trajectory (its prompt, the model's turn, an information
    block), so its prompt starts with a sequence of this call. Lookup is by length and the last few
    ids, then an exact comparison.
    """

    TAIL = 8

    def __init__(self) -> None:
        self._by_tail: dict[tuple[int, tuple[int, ...]], list[Prefix]] = {}
        self._lengths: list[int] = []

    def add(self, ids: Sequence[int], cache: SlotCache, row: int, slot: int) -> None:
        prefix = Prefix(tuple(ids), cache, row, slot)
        self._by_tail.setdefault((prefix.length, prefix.ids[-self.TAIL :]), []).append(prefix)
        self._lengths = sorted({*self._lengths, prefix.length}, reverse=True)

    def longest_prefix(self, ids: Sequence[int]) -> Prefix | None:
        """The longest stored sequence that ``ids`` starts with, or None."""
        ids = tuple(ids)
        for length in self._lengths:
            if 0 < length <= len(ids):
                for prefix in self._by_tail.get((length, ids[max(0, length - self.TAIL) : length]), ()):
                    if prefix.ids == ids[:length]:
                        return prefix
        return None


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
        self._kept = self._previous = PrefixIndex()
        self._weights: tuple[int, ...] = ()
        self.warpers = self._warpers()
        self._stops: dict[tuple[str, ...], StopMatcher] = {}
        self._fused: tuple[tuple[int, ...], list[FusedLayer] | None] = ((), None)

    def _stop_matcher(self, stop: tuple[str, ...]) -> StopMatcher:
        """The stop-string matcher for ``stop``, built once per engine: building it reads the vocabulary."""
        if stop not in self._stops:
            self._stops[stop] = StopMatcher(StopStringCriteria(self.tokenizer, list(stop)))
        return self._stops[stop]

    def _fused_decoder(self, model: PreTrainedModel) -> FusedDecoder | None:
        """The decode step's fused weights for the current weights (built again after they change), or None."""
        if self._fused[0] != self._weights:
            self._fused = (self._weights, FusedDecoder.of(model))
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
        weights = weight_versions(self.model)
        # Sequences of the previous call can be continued only with the weights that computed them.
        self._previous = self._kept if self.reuse_prefixes and weights == self._weights else PrefixIndex()
        self._kept, self._weights = PrefixIndex(), weights
        try:
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
            logits[index] = self._forward(
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
                logits = self._forward(model, token[:, None], positions[:, None], mask, cache, rope)
            else:
                logits = fused.step(model, token, positions, mask.reshape(-1, 1, mask.shape[-1]), cache, rope)
        new, chosen = ids[:, width : width + n].cpu(), logprobs[:, :n].cpu()
        generations = [self._row(new[r], chosen[r], budget, stop) for r in range(rows)]
        for row, (prompt, generation) in enumerate(zip(prompts, generations, strict=True)):
            # Every sampled token but the last was fed back, so the cache holds its keys and values.
            fed = [*prompt, *generation.token_ids[:-1]]
            self._kept.add(fed, *home[row], width - len(prompt))
        return generations

    @staticmethod
    def _forward(
        model, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: SlotCache, rope: Rope
    ) -> torch.Tensor:
        """(B, V) float logits at the last of (B, T) ``ids``, attending to the cache under additive ``mask``.

        The decoder's own modules, in its order: the pre-norm decoder of llama, qwen2 and qwen3 (qwen3
        adds a norm on each query and key head), without transformers' generic dispatch around it. A
        decode step is a few hundred kernels of microseconds each, so every call saved counts: plain
        linear layers and RMS norms go straight to their functions, and the rotary angles come from a
        table (``rope``).
        """
        base = model.model
        hidden = base.embed_tokens(ids)  # (B, T, D)
        cos, sin = rope(positions)  # (B, 1, T, d)
        batch, length, _ = hidden.shape
        for index, layer in enumerate(base.layers):
            attn = layer.self_attn
            x = rms_norm(layer.input_layernorm, hidden)
            q = linear(attn.q_proj, x).view(batch, length, -1, attn.head_dim)  # (B, T, H, d)
            k = linear(attn.k_proj, x).view(batch, length, -1, attn.head_dim)  # (B, T, KV, d)
            v = linear(attn.v_proj, x).view(batch, length, -1, attn.head_dim).transpose(1, 2)  # (B, KV, T, d)
            if hasattr(attn, "q_norm"):
                q, k = rms_norm(attn.q_norm, q), rms_norm(attn.k_norm, k)
            q, k = rotate(q.transpose(1, 2), cos, sin), rotate(k.transpose(1, 2), cos, sin)
            keys, values = cache.update(k, v, index)  # (B, KV, slots, d)
            out = attention(q, keys, values, mask, attn.scaling)  # (B, T, H * d)
            hidden = hidden + linear(attn.o_proj, out)
            x = rms_norm(layer.post_attention_layernorm, hidden)
            mlp = layer.mlp
            hidden = hidden + linear(mlp.down_proj, mlp.act_fn(linear(mlp.gate_proj, x)) * linear(mlp.up_proj, x))
        return linear(model.lm_head, rms_norm(base.norm, hidden[:, -1])).float()

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


@dataclass(frozen=True)
class FusedLayer:
    """One decoder layer's weights for the decode step, with the products that read the same input stacked."""

    input_norm: torch.Tensor
    input_eps: float
    qkv: torch.Tensor  # (H * d + 2 * KV * d, D): the q, k and v projections, in this order
    qkv_bias: torch.Tensor | None
    out: torch.Tensor  # (D, H * d)
    post_norm: torch.Tensor
    post_eps: float
    gate_up: torch.Tensor  # (2 * I, D): the gate and up projections, in this order
    down: torch.Tensor  # (D, I)
    act: torch.nn.Module


@dataclass(frozen=True)
class FusedDecoder:
    """The decode step of a plain float32 decoder in fewer, larger kernels than ``TorchEngine._forward``.

    q, k and v come from one product and gate and up from another, q and k are rotated together, the
    attention's scale and mask enter its first product (``baddbmm``) and each residual enters the product
    before it (``addmm``): about a third fewer kernels a step, on 2-D tensors. The values are
    ``_forward``'s up to float rounding. ``of`` builds it where every layer allows it: plain linear layers
    (no adapters), no bias after the attention, no norms on q and k, RMS norms, a rotary table, float32.
    """

    layers: list[FusedLayer]
    heads: int
    kv_heads: int
    head_dim: int
    scaling: float

    @staticmethod
    def of(model: torch.nn.Module) -> FusedDecoder | None:
        """The fused weights of ``model`` (copies: build again after the weights change), or None."""
        base = model.model
        if model.dtype != torch.float32 or getattr(base.rotary_emb, "rope_type", "default") in Rope.PER_CALL:
            return None
        layers = []
        for layer in base.layers:
            attn, mlp = layer.self_attn, layer.mlp
            qkv = (attn.q_proj, attn.k_proj, attn.v_proj)
            linears = (*qkv, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
            norms = (layer.input_layernorm, layer.post_attention_layernorm)
            if (
                hasattr(attn, "q_norm")
                or any(type(m) is not torch.nn.Linear for m in linears)
                or any(m.bias is not None for m in linears[3:])
                or len({m.bias is None for m in qkv}) > 1
                or not all(is_rms_norm(n) for n in norms)
            ):
                return None
            bias = None if attn.q_proj.bias is None else torch.cat([m.bias for m in qkv])
            layers.append(FusedLayer(
                layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon,
                torch.cat([m.weight for m in qkv]), bias, attn.o_proj.weight,
                layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon,
                torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), mlp.down_proj.weight, mlp.act_fn,
            ))  # fmt: skip
        attn = base.layers[0].self_attn
        heads = attn.config.num_attention_heads
        return FusedDecoder(layers, heads, attn.config.num_key_value_heads, attn.head_dim, attn.scaling)

    def step(
        self, model, token: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, cache: SlotCache, rope: Rope
    ) -> torch.Tensor:
        """(B, V) float logits after one new ``token`` per row at ``positions`` (B,); ``mask``: (B * KV, 1, slots)."""
        base = model.model
        hidden = base.embed_tokens(token)  # (B, D)
        batch, heads, kv_heads, dim = len(token), self.heads, self.kv_heads, self.head_dim
        cos, sin = rope.at(positions)  # (B, 1, d)
        for index, layer in enumerate(self.layers):
            x = F.rms_norm(hidden, hidden.shape[-1:], layer.input_norm, layer.input_eps)
            qkv = F.linear(x, layer.qkv, layer.qkv_bias).view(batch, -1, dim)  # (B, H + 2 KV, d)
            qk = rotate(qkv[:, : heads + kv_heads], cos, sin)  # (B, H + KV, d)
            keys, values = cache.append(index, qk[:, heads:], qkv[:, heads + kv_heads :])  # (B * KV, S, d)
            query = qk[:, :heads].reshape(batch * kv_heads, heads // kv_heads, dim)  # (B * KV, H / KV, d)
            scores = torch.baddbmm(mask, query, keys.transpose(1, 2), alpha=self.scaling)  # (B * KV, H / KV, S)
            out = torch.bmm(scores.softmax(-1), values).view(batch, heads * dim)  # (B, H * d)
            hidden = torch.addmm(hidden, out, layer.out.t())
            x = F.rms_norm(hidden, hidden.shape[-1:], layer.post_norm, layer.post_eps)
            gate, up = F.linear(x, layer.gate_up).chunk(2, -1)  # (B, I) each
            hidden = torch.addmm(hidden, layer.act(gate).mul_(up), layer.down.t())
        return linear(model.lm_head, rms_norm(base.norm, hidden)).float()


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


class Rope:
    """The rotary angles of positions ``0 .. n - 1``, computed once by the model's own rotary embedding.

    The angles of a position do not depend on the others, so a table lookup gives the very values the
    module computes, for one kernel instead of a dozen per step. Rotary types whose angles depend on the
    sequence length (``dynamic``, ``longrope``) are computed by the module at every call instead. The
    sine is stored with its first half negated, so that a rotation is ``x * cos + roll(x) * sin``.
    """

    PER_CALL = ("dynamic", "longrope")

    def __init__(self, model, n: int) -> None:
        self.module = model.model.rotary_emb
        self.dtype = model.dtype
        self.table: tuple[torch.Tensor, torch.Tensor] | None = None
        if getattr(self.module, "rope_type", "default") not in self.PER_CALL:
            self.table = self._angles(torch.arange(n, device=model.device)[None])  # (1, n, d) each
            self.table = (self.table[0][0], self.table[1][0])

    def _angles(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = self.module(torch.empty(0, dtype=self.dtype, device=positions.device), positions)
        half = sin.shape[-1] // 2
        return cos, torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)

    def __call__(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, T, d) cosines and signed sines of (B, T) ``positions``, broadcast over heads."""
        cos, sin = (t[positions] for t in self.table) if self.table is not None else self._angles(positions)
        return cos[:, None], sin[:, None]

    def at(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, d) cosines and signed sines of (B,) ``positions`` (one per row), broadcast over heads."""
        cos, sin = (t[positions] for t in self.table) if self.table is not None else self._angles(positions[:, None])
        return cos.view(len(positions), 1, -1), sin.view(len(positions), 1, -1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of (B, heads, T, d) ``x``: transformers' ``x * cos + rotate_half(x) * sin``.

    ``rotate_half(x)`` is ``x`` with its halves swapped and the first negated; ``sin`` carries that sign
    (``Rope``), so the swap is one ``roll`` and the product is the same, bit for bit.
    """
    return x * cos + x.roll(x.shape[-1] // 2, -1) * sin


def linear(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)``; a plain ``nn.Linear`` goes straight to its function (adapters keep their own forward)."""
    if type(module) is torch.nn.Linear:
        return F.linear(x, module.weight, module.bias)
    return module(x)


def is_rms_norm(module: torch.nn.Module) -> bool:
    """Whether ``module`` is one of transformers' RMS norms (a weight and ``variance_epsilon``, no offset)."""
    return type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon")


def rms_norm(module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` for transformers' RMS norms; in float32 torch's fused kernel, which gives the same values."""
    if x.dtype == torch.float32 and is_rms_norm(module):
        return F.rms_norm(x, module.weight.shape, module.weight, module.variance_epsilon)
    return module(x)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Scaled dot-product attention of (B, H, T, d) queries on (B, KV, S, d) keys and values, heads merged.

    A single query position (decoding) folds the H / KV query heads of each key head into the query
    axis and reads the cache in place with two batched products, which on the CPU beats the fused
    kernel at these shapes; a block of positions goes to the fused kernel.
    """
    batch, heads, length, dim = q.shape
    groups = heads // k.shape[1]
    if length == 1:
        scores = torch.matmul(q.view(batch, -1, groups, dim), k.transpose(-1, -2)).mul_(scale).add_(mask)
        out = torch.matmul(scores.softmax(-1), v)  # (B, KV, groups, d)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=groups > 1)
    return out.reshape(batch, heads, length, dim).transpose(1, 2).reshape(batch, length, heads * dim)
