"""The multi-turn search agent loop, batched across all trajectories of a step.

Each turn, every unfinished trajectory is continued in one engine call until it writes
``</search>``, ``</answer>``, EOS or hits a limit; then all searches of the turn go to the
retriever in one call, and each searching trajectory gets its information block. Token ids
are concatenated turn by turn (prompt, generated, information), never decoded and
re-encoded, with a loss mask of 1 on the model's own tokens and 0 on everything else.

Limits are cut on purpose and counted: queries beyond ``max_parallel_queries``, information
tokens beyond ``max_information_tokens``, and the length limits that end a trajectory: the
configured ``max_total_tokens`` or the model's context length, whichever is smaller.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from transformers import PreTrainedTokenizerBase

from lit_search_rl.checks import check_one_of, require_at_least
from lit_search_rl.retrieval.base import Retriever
from lit_search_rl.rollout.engine import GenerationEngine
from lit_search_rl.rollout.protocols import PROTOCOLS, AgentProtocol
from lit_search_rl.rollout.tags import check_instruction

FinishReason = Literal["answered", "max_turns", "length", "invalid"]


@dataclass
class RolloutConfig:
    """Limits and settings of the agent loop."""

    max_turns: int = 5
    """Model turns per trajectory; a trajectory still searching after the last one ends as ``max_turns``."""
    max_new_tokens_per_turn: int = 256
    """Tokens the model may write in one turn."""
    max_total_tokens: int = 2048
    """Prompt plus response tokens; reaching it ends the trajectory as ``length``."""
    max_information_tokens: int = 512
    """Tokens of one information block; longer blocks are cut (and counted)."""
    max_parallel_queries: int = 3
    """Queries the model may send in one turn; more are dropped (and counted)."""
    documents_per_query: int = 3
    """Documents retrieved per query (the retriever's top k; Search-R1's ``topk``)."""
    max_doc_chars: int | None = None
    """Characters of each document's text shown to the model; unset for whole passages."""
    instruction: str | None = None
    """The user message asking each question, a template of ``{question}`` and ``{max_queries}``; unset for the
    protocol's own (Search-R1's instruction, which explains the tags). A model trained from scratch, such as the
    tiny one, reads nothing in it, so a short one (``"Question: {question}"``) saves it a third of its tokens. The
    warm start must have used the same (the SFT module's ``data.instruction``)."""
    protocol: Literal["tag", "tool_call"] = "tag"
    """How agent and environment talk: ``tag`` (Search-R1's ``<search>`` and ``<information>`` tags) or
    ``tool_call`` (Qwen3's JSON tool calls and ``<tool_response>`` blocks)."""

    def validate(self) -> None:
        names = ("max_turns", "max_new_tokens_per_turn", "max_total_tokens", "max_information_tokens",
                 "max_parallel_queries", "documents_per_query")  # fmt: skip
        require_at_least(self, names, prefix="model.rollout.")
        check_one_of(vars(self), "protocol", PROTOCOLS, "model.rollout.")
        check_instruction(self.instruction, "model.rollout.instruction")


@dataclass
class Trajectory:
    """One rollout of one question.

    Attributes:
        prompt_ids: the chat-templated prompt.
        response_ids: everything after the prompt: generated ids and information ids, in order.
        loss_mask: 1 for ids the model generated, 0 for information ids; aligned with ``response_ids``.
        logprobs: the engine's logprob of each generated id (0.0 on information ids), or None.
        text: the model's own text only (its generated turns, decoded).
        answer: the answer extracted from ``text`` (never from the prompt or information), or None.
        num_searches: queries sent to the retriever.
        queries: the queries sent to the retriever, in order.
        num_turns: model turns taken.
        finish_reason: ``answered``, ``max_turns``, ``length`` or ``invalid``.
        dropped_queries: queries cut by ``max_parallel_queries``.
        truncated_information: information blocks cut by ``max_information_tokens``.
    """

    prompt_ids: list[int]
    response_ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] | None = field(default_factory=list)
    text: str = ""
    answer: str | None = None
    num_searches: int = 0
    queries: list[str] = field(default_factory=list)
    num_turns: int = 0
    finish_reason: FinishReason | None = None
    dropped_queries: int = 0
    truncated_information: int = 0

    @property
    def length(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)

    def _append(self, ids: Sequence[int], trainable: bool, logprobs: Sequence[float] | None = None) -> None:
        self.response_ids += ids
        self.loss_mask += [int(trainable)] * len(ids)
        if self.logprobs is not None:
            if trainable and logprobs is None:
                self.logprobs = None
            else:
                self.logprobs += list(logprobs) if trainable else [0.0] * len(ids)


@dataclass
class RolloutStats:
    """Where the time of one ``rollout`` call went."""

    generate_seconds: float = 0.0
    retrieve_seconds: float = 0.0
    generated_tokens: int = 0
    retriever_calls: int = 0


def context_length_of(model: object) -> int | None:
    """The positions a transformers model attends to (its config's ``max_position_embeddings``), or None."""
    length = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return length if isinstance(length, int) and length > 0 else None


class AgentLoop:
    """Runs batched multi-turn rollouts.

    Args:
        engine: generates the model's turns.
        retriever: answers the searches (one call per turn for the whole batch).
        tokenizer: encodes prompts and information blocks, decodes the model's text.
        config: limits and settings.
        protocol: how agent and environment talk; unset for the one ``config.protocol`` names.
        context_length: positions the model can attend to (``max_position_embeddings``); a trajectory ends as
            ``length`` there when that comes before ``max_total_tokens``. Unset: ``max_total_tokens`` alone.
    """

    def __init__(
        self,
        engine: GenerationEngine,
        retriever: Retriever,
        tokenizer: PreTrainedTokenizerBase,
        config: RolloutConfig | None = None,
        protocol: AgentProtocol | None = None,
        context_length: int | None = None,
    ) -> None:
        self.engine, self.retriever, self.tokenizer = engine, retriever, tokenizer
        self.config = config or RolloutConfig()
        self.config.validate()
        if context_length is not None and context_length < 1:
            raise ValueError(f"context_length must be at least 1 (got {context_length})")
        self.max_length = min(self.config.max_total_tokens, context_length or self.config.max_total_tokens)
        """Prompt plus response tokens of a trajectory; reaching it ends the trajectory as ``length``."""
        self.protocol = protocol or PROTOCOLS[self.config.protocol]()
        self._close_ids = tokenizer(self.protocol.observation_close, add_special_tokens=False)["input_ids"]
        self.stats = RolloutStats()

    def rollout(self, questions: Sequence[str]) -> list[Trajectory]:
        """One trajectory per question (repeat a question K times for a group of K)."""
        self.stats = RolloutStats()
        c = self.config
        trajectories = [
            Trajectory(self.protocol.prompt_ids(self.tokenizer, q, c.max_parallel_queries, c.instruction))
            for q in questions
        ]
        for t in trajectories:
            if t.length >= self.max_length:
                t.finish_reason = "length"
        for _ in range(c.max_turns):
            active = [t for t in trajectories if t.finish_reason is None]
            if not active:
                break
            searches = self._generate_turn(active)
            self._add_information(searches)
        for t in trajectories:
            if t.finish_reason is None:
                t.finish_reason = "max_turns"
            t.answer = self.protocol.extract_answer(t.text) if t.finish_reason == "answered" else None
        return trajectories

    def _generate_turn(self, active: list[Trajectory]) -> list[tuple[Trajectory, list[str]]]:
        """Generate one turn for every active trajectory; returns those that searched, with their queries."""
        c = self.config
        budgets = [min(c.max_new_tokens_per_turn, self.max_length - t.length) for t in active]
        start = time.perf_counter()
        outputs = self.engine.generate([t.prompt_ids + t.response_ids for t in active], budgets, self.protocol.stop)
        self.stats.generate_seconds += time.perf_counter() - start
        searches = []
        for t, out in zip(active, outputs, strict=True):
            t._append(out.token_ids, trainable=True, logprobs=out.logprobs)
            self.stats.generated_tokens += len(out.token_ids)
            turn_text = self.tokenizer.decode(out.token_ids, skip_special_tokens=True)
            t.text += turn_text
            t.num_turns += 1
            action = self.protocol.parse(turn_text, c.max_parallel_queries)
            if action.kind == "answer":
                t.finish_reason = "answered"
            elif out.finish == "length":
                t.finish_reason = "length"  # cut mid-turn by a token limit
            elif action.kind == "search":
                t.dropped_queries += action.dropped_queries
                searches.append((t, action.queries))
            else:
                t.finish_reason = "invalid"
        return searches

    def _add_information(self, searches: list[tuple[Trajectory, list[str]]]) -> None:
        """One retriever call for all queries of the turn, then each trajectory's information block."""
        if not searches:
            return
        c = self.config
        flat = [q for _, queries in searches for q in queries]
        start = time.perf_counter()
        results = self.retriever.search(flat, c.documents_per_query)
        self.stats.retrieve_seconds += time.perf_counter() - start
        self.stats.retriever_calls += 1
        position = 0
        for t, queries in searches:
            docs = results[position : position + len(queries)]
            position += len(queries)
            t.num_searches += len(queries)
            t.queries += queries
            text = self.protocol.observation(docs, c.max_doc_chars)
            # verbose=False: passages may encode past the model's length, which is cut here before the model
            # sees it; transformers' warning about it would only be noise.
            ids = self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
            if len(ids) > c.max_information_tokens:
                # Cut the passages, keep the closing text so the model sees a well-formed block.
                keep = max(0, c.max_information_tokens - len(self._close_ids))
                ids = ids[:keep] + self._close_ids
                t.truncated_information += 1
            if t.length + len(ids) >= self.max_length:
                t.finish_reason = "length"
                continue
            t._append(ids, trainable=False)
