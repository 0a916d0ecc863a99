"""Copy drills: rows that teach a small model to copy by content before it reads any trajectory.

A drill row is ``length`` random ordinary tokens, then the same tokens again cut into chunks of ``chunk``
tokens and put in a new order. The loss is on every chunk token after the first: to predict it the model
must find where the chunk's previous token stood in the first half and copy what followed it there. That is
the lookup an agent needs to copy a name from a passage (an induction head), and a trajectory holds only a few
such copies, while a drill row holds ``length * (chunk - 1) / chunk`` of them. A tiny model learns the lookup
from these dense rows in a few hundred steps, then learns the trajectories several times faster than without
them (``benchmarks/RESULTS.md``, "dense content-copy drills").

Rows are a pure function of ``(seed, index)``, so a run is reproducible and needs no stored data.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedTokenizerBase

from lit_search_rl.rollout.tags import TAGS


def ordinary_token_ids(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Every token id of ``tokenizer`` except special tokens and the protocol's tags."""
    excluded = set(tokenizer.all_special_ids) | set(tokenizer.convert_tokens_to_ids(list(TAGS)))
    return torch.tensor([i for i in range(len(tokenizer)) if i not in excluded], dtype=torch.long)


def check_drill_shape(length: int, chunk: int, length_name: str = "length", chunk_name: str = "chunk") -> None:
    """Raise naming both options unless ``length`` is a multiple of ``chunk`` and ``chunk`` is at least 2."""
    if chunk < 2 or length < chunk or length % chunk:
        raise ValueError(
            f"{length_name} ({length}) must be a multiple of {chunk_name} ({chunk}), which must be at least 2"
        )


class CopyDrills(Dataset):
    """``rows`` copy-drill rows over ``token_ids``, each a dict with ``input_ids``, ``loss_mask``,
    ``information_mask`` and ``copy_mask`` (the loss mask: every target is a copy) like a trajectory's.

    Args:
        token_ids: The ids a row draws from (``ordinary_token_ids``).
        rows: Number of rows.
        length: Tokens of the random first half; a row is twice as long.
        chunk: Tokens per shuffled chunk of the second half (at least 2: the first token of a chunk cannot be
            predicted, the others are copies).
        seed: Seed of the rows.
    """

    def __init__(self, token_ids: torch.Tensor, rows: int, length: int = 64, chunk: int = 4, seed: int = 0) -> None:
        check_drill_shape(length, chunk, "copy drills: length")
        if len(token_ids) < 2:
            raise ValueError("copy drills: the tokenizer has fewer than 2 ordinary tokens")
        self.token_ids, self.rows, self.length, self.chunk, self.seed = token_ids, rows, length, chunk, seed
        # Target tokens of the second half: all but the first of each chunk.
        self.loss_mask = [0] * length + [int(t % chunk != 0) for t in range(length)]

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        if not 0 <= index < self.rows:
            raise IndexError(index)
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        first = self.token_ids[torch.randint(len(self.token_ids), (self.length,), generator=generator)]
        order = torch.randperm(self.length // self.chunk, generator=generator)
        shuffled = first.view(-1, self.chunk)[order].flatten()
        return {
            "input_ids": torch.cat([first, shuffled]).tolist(),
            "loss_mask": list(self.loss_mask),
            "information_mask": [0] * (2 * self.length),
            "copy_mask": list(self.loss_mask),
        }
