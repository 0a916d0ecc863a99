"""The KV cache of ``TorchEngine``: one allocation per call, filled in place, and the sequences kept for the next."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch


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
