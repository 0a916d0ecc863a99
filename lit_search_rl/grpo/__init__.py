"""GRPO for search agents: the LightningModule (``module``) and its parts, each in a file of its own."""

from lit_search_rl.grpo.module import GRPOModule
from lit_search_rl.grpo.update import UpdateBatch

__all__ = ["GRPOModule", "UpdateBatch"]
