"""A lean decoding loop over the policy's own forward pass: the fast engine on the CPU.

``HFEngine`` spends most of a decode step outside the model: ``generate`` rebuilds the attention
mask, grows the KV cache by concatenation, and runs its generic bookkeeping every token. For the
small policies trained on a CPU that overhead is many times the arithmetic (benchmarks/RESULTS.md,
rollout engines). This engine keeps everything that decides *what* is generated from transformers
and replaces only the loop around it:

- the forward pass is the model's own ``forward`` (its layers, rotary embedding, norms, head and any
  LoRA adapters), called with masks prepared once per step and a KV cache preallocated once per call
  that is written in place;
- sampling uses transformers' own logits warpers (temperature, top-k, top-p, in ``generate``'s order)
  and ``torch.multinomial``, stop strings transformers' ``StopStringCriteria``, so rows stop exactly
  where ``generate`` would stop them;
- prompts are left-padded and positions counted from each row's first real token, as in ``generate``.

Seeding, budget groups, batch splitting and the finish reasons are ``HFEngine``'s. Decoding runs on
``threads`` threads (1 by default): a decode step is hundreds of small kernels, and waking a second
OpenMP thread for each costs more than it brings (README, "CPU threads").
"""

from __future__ import annotations

from collections.abc import Sequence

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
"""Decoder-only models whose forward takes prepared masks and a cache with ``update`` (full attention)."""


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
    computed; they are written at slots ``[start, end)`` and the keys of all slots up to ``end`` are
    returned (views, no copies). Shapes: (layers, B, kv_heads, slots, head_dim).
    """

    def __init__(self, config, batch: int, slots: int, dtype: torch.dtype, device: torch.device) -> None:
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        shape = (config.num_hidden_layers, batch, config.num_key_value_heads, slots, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.start = self.end = 0

    def advance(self, length: int) -> None:
        """The next forward computes ``length`` positions, written after the ones already cached."""
        self.start, self.end = self.end, self.end + length

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        self.keys[layer_idx, :, :, self.start : self.end] = key
        self.values[layer_idx, :, :, self.start : self.end] = value
        return self.keys[layer_idx, :, :, : self.end], self.values[layer_idx, :, :, : self.end]


class TorchEngine(HFEngine):
    """Batched generation with the policy's forward in a decoding loop of its own (see the module docstring).

    Args:
        model: the causal LM (a supported type, see ``unsupported_reason``; peft-wrapped is fine).
        tokenizer: its tokenizer (for stop strings and padding).
        sampling: temperature, top-p, top-k and seed.
        max_batch_size: rows per decoding loop; larger batches are split.
        threads: torch threads while decoding (restored afterwards); None keeps the process's setting.
        prefill_threads: torch threads for the prompt's forward pass; None keeps the process's setting.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        sampling: SamplingConfig | None = None,
        max_batch_size: int = 64,
        threads: int | None = 1,
        prefill_threads: int | None = None,
    ) -> None:
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"TorchEngine cannot run this model: {reason}")
        super().__init__(model, tokenizer, sampling, max_batch_size)
        self.threads = threads
        self.prefill_threads = prefill_threads
        self.warpers = self._warpers()

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
        try:
            return super().generate(prompts, max_new_tokens, stop)
        finally:
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
        # ids: left-padded prompts then the new tokens, as generate's (stop strings are matched on it).
        ids = torch.full((rows, width + budget), self.pad_id, dtype=torch.long, device=device)  # (B, T + N)
        ids[:, :width] = input_ids.to(device)
        # The cache holds each prompt from slot 0 (right-padded), so that the prompts' forward pass is
        # plainly causal (no mask: the fast attention kernel); new tokens go to slots T, T + 1, ...
        lengths = attention_mask.sum(-1).to(device)  # (B,)
        slots = torch.arange(width + budget, device=device)
        key_ok = (slots < lengths[:, None]) | (slots >= width)  # (B, T + N)
        open_slots = torch.zeros((rows, 1, 1, width + budget), dtype=dtype, device=device)  # (B, 1, 1, T + N)
        open_slots.masked_fill_(~key_ok[:, None, None, :], torch.finfo(dtype).min)
        right_padded = torch.full((rows, width), self.pad_id, dtype=torch.long, device=device)  # (B, T)
        for row, prompt in enumerate(prompts):
            right_padded[row, : len(prompt)] = torch.tensor(list(prompt))
        cache = SlotCache(model.config, rows, width + budget, dtype, device)
        stop_criteria = StopStringCriteria(self.tokenizer, list(stop)) if stop else None
        eos = torch.tensor(sorted(self.eos_ids), device=device)
        unfinished = torch.ones(rows, dtype=torch.bool, device=device)
        logprobs = torch.zeros((rows, budget), dtype=torch.float32, device=device)  # (B, N)
        if self.prefill_threads is not None:
            torch.set_num_threads(self.prefill_threads)
        cache.advance(width)
        logits = self._forward(model, right_padded, slots[None, :width], None, cache, last=lengths - 1)  # (B, V)
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        n = 0
        while True:
            token, logprobs[:, n] = self._sample(logits, ids[:, : width + n])
            token = torch.where(unfinished, token, self.pad_id)
            ids[:, width + n] = token
            unfinished &= ~torch.isin(token, eos)
            if stop_criteria is not None:
                unfinished &= ~stop_criteria(ids[:, : width + n + 1], logits)
            n += 1
            if n == budget or not unfinished.any():
                break
            cache.advance(1)
            positions = (lengths + (n - 1))[:, None]  # (B, 1)
            logits = self._forward(model, token[:, None], positions, open_slots[..., : width + n], cache)
        new, chosen = ids[:, width : width + n].cpu(), logprobs[:, :n].cpu()
        return [self._row(new[r], chosen[r], budget, stop) for r in range(rows)]

    @staticmethod
    def _forward(
        model,
        ids: torch.Tensor,
        positions: torch.Tensor,
        mask: torch.Tensor | None,
        cache: SlotCache,
        last: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, V) float logits of (B, T) ``ids`` at position ``last`` of each row (default: the last one).

        The decoder's own modules, in its order; ``mask`` None means plainly causal.
        The pre-norm decoder of llama, qwen2 and qwen3 (qwen3 adds a norm on each query and key head),
        without transformers' generic dispatch around it.
        """
        base = model.model
        hidden = base.embed_tokens(ids)  # (B, T, D)
        cos, sin = base.rotary_emb(hidden, positions)
        batch, length, _ = hidden.shape
        for index, layer in enumerate(base.layers):
            attn = layer.self_attn
            x = layer.input_layernorm(hidden)
            q = attn.q_proj(x).view(batch, length, -1, attn.head_dim)  # (B, T, H, d)
            k = attn.k_proj(x).view(batch, length, -1, attn.head_dim)  # (B, T, KV, d)
            v = attn.v_proj(x).view(batch, length, -1, attn.head_dim).transpose(1, 2)  # (B, KV, T, d)
            if hasattr(attn, "q_norm"):
                q, k = attn.q_norm(q), attn.k_norm(k)
            q, k = rotate(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
            keys, values = cache.update(k, v, index)  # (B, KV, slots, d)
            out = attention(q, keys, values, mask, attn.scaling)  # (B, T, H * d)
            hidden = hidden + attn.o_proj(out)
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        hidden = hidden[:, -1] if last is None else hidden[torch.arange(batch, device=hidden.device), last]
        return model.lm_head(base.norm(hidden)).float()

    def _sample(self, logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The next token of each row and its logprob under the raw logits (greedy at temperature 0).

        Sampling draws from the distribution ``generate`` samples from (its warpers, in its order) by
        inverting the cumulative distribution: one uniform number per row, where ``torch.multinomial``
        costs many times a decode step's arithmetic on the CPU.
        """
        normaliser = logits.logsumexp(-1, keepdim=True)  # (B, 1)
        if self.sampling.temperature == 0:
            token = logits.argmax(-1)
        else:
            probs = (logits - normaliser).exp_() if not self.warpers else self.warpers(ids, logits).softmax(-1)
            cdf = probs.cumsum_(-1)  # (B, V)
            draw = torch.rand((len(cdf), 1), device=cdf.device) * cdf[:, -1:]
            token = torch.searchsorted(cdf, draw, right=True)[:, 0].clamp_(max=cdf.shape[-1] - 1)
        return token, (logits.gather(-1, token[:, None]) - normaliser)[:, 0]


def rotate(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary position embedding of (B, heads, T, d) queries and keys with (B, T, d) ``cos`` and ``sin``."""
    cos, sin = cos[:, None], sin[:, None]
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """Scaled dot-product attention of (B, H, T, d) queries on (B, KV, S, d) keys and values, heads merged.

    A single query position (decoding, with an additive ``mask``) folds the H / KV query heads of each
    key head into the query axis and reads the cache in place with two batched products, which on the
    CPU beats the fused kernel at these shapes; a block of positions (``mask`` None) is plainly causal.
    """
    batch, heads, length, dim = q.shape
    groups = heads // k.shape[1]
    if length == 1:
        scores = torch.matmul(q.view(batch, -1, groups, dim), k.transpose(-1, -2)).mul_(scale).add_(mask)
        out = torch.matmul(scores.softmax(-1), v)  # (B, KV, groups, d)
    else:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=groups > 1)
    return out.reshape(batch, heads, length, dim).transpose(1, 2).reshape(batch, length, heads * dim)
