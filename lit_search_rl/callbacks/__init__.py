"""Lightning callbacks: vLLM weight sync, the retriever's lifecycle, rollout budgets and recycling plots."""

from lit_search_rl.callbacks.recycling_plot import RecyclingPlot
from lit_search_rl.callbacks.retriever_service import RetrieverService
from lit_search_rl.callbacks.rollout_budget import RolloutBudget
from lit_search_rl.callbacks.weight_sync import VLLMWeightSync

__all__ = ["RecyclingPlot", "RetrieverService", "RolloutBudget", "VLLMWeightSync"]
