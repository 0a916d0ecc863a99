"""Generation engines: token ids in, sampled token ids (and their logprobs) out.

The agent loop talks to an engine only through ``generate``, so the transformers engine
(CPU, tests) and the vLLM engine (GPU) are interchangeable. Engines never re-tokenize: the
ids they return are exactly the ids the model sampled.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class SamplingConfig:
    """How tokens are sampled during rollouts."""

    temperature: float = 1.0
    """Softmax temperature; 0 means greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    top_k: int = 0
    """Sample among the k most likely tokens; 0 for all."""
    seed: int | None = None
    """Seed of the first call; each later call uses the next seed, so a run is reproducible."""

    def validate(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"model.sampling.temperature must not be negative (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"model.sampling.top_p must be in (0, 1] (got {self.top_p})")
        if self.top_k < 0:
            raise ValueError(f"model.sampling.top_k must not be negative (got {self.top_k})")


@dataclass
class Generation:
    """One continuation.

    Attributes:
        token_ids: sampled ids, up to and including the stop string's tokens or EOS.
        logprobs: the model's log-probability of each sampled id (before temperature and
            top-p, as vLLM reports by default), or None when the engine does not give them.
        finish: ``stop`` (a stop string), ``eos``, or ``length`` (the token limit).
    """

    token_ids: list[int]
    logprobs: list[float] | None
    finish: Literal["stop", "eos", "length"]


class GenerationEngine(ABC):
    """Batched continuation of token-id prompts."""

    @abstractmethod
    def generate(
        self, prompts: Sequence[Sequence[int]], max_new_tokens: Sequence[int], stop: Sequence[str]
    ) -> list[Generation]:
        """Continue every prompt by at most its ``max_new_tokens``, stopping after any of ``stop`` or EOS."""
