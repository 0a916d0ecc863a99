"""The forward passes of ``TorchEngine``: the decoder's own modules called in order, and a fused decode step.

Both serve the pre-norm decoders of llama, qwen2 and qwen3 (full attention); ``TorchEngine`` checks
the model first (``unsupported_reason``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lit_search_rl.rollout.slot_cache import SlotCache


def forward_modules(
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
    """The decode step of a plain float32 decoder in fewer, larger kernels than ``forward_modules``.

    q, k and v come from one product and gate and up from another, q and k are rotated together, the
    attention's scale and mask enter its first product (``baddbmm``) and each residual enters the product
    before it (``addmm``): about a third fewer kernels a step, on 2-D tensors. The values are
    ``forward_modules``'s up to float rounding. ``of`` builds it where every layer allows it: plain linear layers
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
        cos, sin = self(positions[:, None])  # (B, 1, 1, d)
        return cos[:, 0], sin[:, 0]


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
