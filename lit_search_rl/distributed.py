"""What GRPO needs from torch.distributed: rank, world size, object gathers and balanced shards.

Every rank holds the same candidate questions and the same pool. Each rank rolls out its own
shard of the candidates; the trajectories are gathered so that every rank sees the whole step
in draw order, makes the same decisions (classification, effective batch, pool reports), and
then trains on its balanced share of the effective batch. Without an initialised process
group every helper is the single-process identity.
"""

from __future__ import annotations

import hashlib
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

T = TypeVar("T")


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the default process group; (0, 1) when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(items: list[T], rank: int, world: int) -> list[int]:
    """Positions of ``items`` rolled out by ``rank``: every ``world``-th one, starting at ``rank``.

    Strided rather than contiguous so each rank gets a mix of the draw (with a recycling pool
    the draw order follows the weights) and the shards differ in size by at most one.
    """
    return list(range(rank, len(items), world))


def gather_shards(local: list[T], total: int) -> list[T]:
    """Reassemble the full, ordered list from every rank's ``shard`` of it.

    ``local`` holds this rank's items in shard order; the result is identical on every rank.
    """
    rank, world = rank_and_world()
    if world == 1:
        return list(local)
    pieces: list[list[T] | None] = [None] * world
    dist.all_gather_object(pieces, local)
    out: list[T | None] = [None] * total
    for r, piece in enumerate(pieces):
        for position, item in zip(shard(out, r, world), piece, strict=True):
            out[position] = item
    return out  # type: ignore[return-value]


def balanced_rows(num_rows: int, rank: int, world: int) -> tuple[list[int], int]:
    """This rank's rows of an ``num_rows``-row batch and the padding rows it must add.

    Every rank ends with ``ceil(num_rows / world)`` rows, so all ranks run the same number of
    micro-steps (a rank that stopped early would hang the others' gradient all-reduce).
    """
    per_rank = -(-num_rows // world)
    rows = list(range(rank, num_rows, world))
    return rows, per_rank - len(rows)


def all_ranks_true(flag: bool) -> bool:
    """True only when ``flag`` is true on every rank (a decision every rank must share)."""
    rank, world = rank_and_world()
    if world == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item() > 0)


def sum_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Element-wise sum of a dict of floats over ranks (same keys on every rank)."""
    rank, world = rank_and_world()
    if world == 1:
        return dict(values)
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(tensor)
    return dict(zip(keys, tensor.tolist(), strict=True))


def state_digest(state: Any) -> str:
    """A short hash of a (nested) state dict of arrays, numbers and strings, for cross-rank checks."""
    h = hashlib.sha256()

    def visit(x: Any) -> None:
        if isinstance(x, dict):
            for k in sorted(x, key=str):
                h.update(str(k).encode())
                visit(x[k])
        elif isinstance(x, list | tuple):
            for v in x:
                visit(v)
        elif isinstance(x, np.ndarray):
            h.update(np.ascontiguousarray(x).tobytes())
        elif isinstance(x, torch.Tensor):
            h.update(x.detach().cpu().contiguous().numpy().tobytes())
        else:
            h.update(repr(x).encode())

    visit(state)
    return h.hexdigest()[:16]


def check_identical(name: str, digest: str) -> None:
    """Raise on every rank if ``digest`` differs between ranks (e.g. the pools drifted apart)."""
    rank, world = rank_and_world()
    if world == 1:
        return
    digests: list[str | None] = [None] * world
    dist.all_gather_object(digests, digest)
    if len(set(digests)) > 1:
        raise RuntimeError(f"{name} differs between ranks: {digests}")
