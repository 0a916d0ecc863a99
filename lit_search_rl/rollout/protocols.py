"""Agent protocols behind one interface: the tag protocol (default) and Qwen3-style JSON tool calls.

A protocol says how the prompt is built, where generation stops, what action a turn takes,
what text the environment appends after a search, and where the answer is. The agent loop
only talks to this interface.

Tool calls follow the format Qwen3's chat template teaches::

    <tool_call>
    {"name": "search", "arguments": {"query": "..."}}
    </tool_call>

one block per query (parallel calls are consecutive blocks in one message, which ends with
EOS); the results come back as a user turn of ``<tool_response>`` blocks, as the template
renders ``tool`` messages. The final answer is written inside ``<answer> ... </answer>``.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from lit_search_rl.retrieval.base import Document
from lit_search_rl.rollout import actions
from lit_search_rl.rollout.encoding import encode_messages, encode_prompt
from lit_search_rl.rollout.tags import (
    ANSWER_CLOSE,
    INFO_CLOSE,
    SEARCH_CLOSE,
    format_documents,
    information_block,
    user_prompt,
)


class AgentProtocol(ABC):
    """How the agent and the environment talk."""

    stop: tuple[str, ...]
    """Strings that end a model turn (EOS always does)."""

    @abstractmethod
    def prompt_ids(
        self, tokenizer: PreTrainedTokenizerBase, question: str, max_queries: int, instruction: str | None = None
    ) -> list[int]:
        """Ids of the chat-templated prompt, ending with the opened assistant turn; ``instruction`` is the user
        message's template (``{question}``, ``{max_queries}``), the protocol's own when unset."""

    @abstractmethod
    def parse(self, turn_text: str, max_queries: int) -> actions.Action:
        """The action of one generated turn."""

    @abstractmethod
    def observation(self, documents: Sequence[Sequence[Document]], max_doc_chars: int | None) -> str:
        """Environment text after a search turn; ``documents`` holds one list per query."""

    @property
    @abstractmethod
    def observation_close(self) -> str:
        """The text that ends an observation; kept when a long observation is cut."""

    def extract_answer(self, text: str) -> str | None:
        """The answer in the model's own text, or None."""
        return actions.extract_answer(text)


class TagProtocol(AgentProtocol):
    """``<think>`` / ``<search>`` / ``<information>`` / ``<answer>`` (Search-R1 style)."""

    stop = (SEARCH_CLOSE, ANSWER_CLOSE)

    def prompt_ids(
        self, tokenizer: PreTrainedTokenizerBase, question: str, max_queries: int, instruction: str | None = None
    ) -> list[int]:
        return encode_prompt(tokenizer, question, max_queries, instruction)

    def parse(self, turn_text: str, max_queries: int) -> actions.Action:
        return actions.parse_action(turn_text, max_queries)

    def observation(self, documents: Sequence[Sequence[Document]], max_doc_chars: int | None) -> str:
        return information_block([d for docs in documents for d in docs], max_doc_chars)

    @property
    def observation_close(self) -> str:
        return f"{INFO_CLOSE}\n\n"


SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the knowledge base and return the most relevant passages.",
        "parameters": {
            "type": "object",
            "properties": {"query": {"type": "string", "description": "What to search for."}},
            "required": ["query"],
        },
    },
}

TOOL_INSTRUCTION = (
    "Answer the question. Use the search tool to look things up; you may call it up to {max_queries} times "
    "in one message. When you know the answer, write it inside <answer> and </answer> with no explanation, "
    "for example <answer> Paris </answer>.\nQuestion: {question}"
)
_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


class ToolCallProtocol(AgentProtocol):
    """JSON tool calls as Qwen3 emits them, results as ``<tool_response>`` blocks."""

    stop = (ANSWER_CLOSE,)

    def prompt_ids(
        self, tokenizer: PreTrainedTokenizerBase, question: str, max_queries: int, instruction: str | None = None
    ) -> list[int]:
        content = user_prompt(question, max_queries, instruction or TOOL_INSTRUCTION)
        return encode_messages(tokenizer, [{"role": "user", "content": content}], tools=[SEARCH_TOOL])

    def parse(self, turn_text: str, max_queries: int) -> actions.Action:
        visible = actions.visible_text(turn_text)
        answer = actions.extract_answer(turn_text)
        queries: list[str] = []
        for block in _TOOL_CALL.findall(visible):
            try:
                call = json.loads(block)
            except json.JSONDecodeError:
                continue
            if not isinstance(call, dict) or call.get("name") != "search":
                continue
            arguments = call.get("arguments")
            if isinstance(arguments, str):  # some models emit the arguments as a JSON string
                try:
                    arguments = json.loads(arguments)
                except json.JSONDecodeError:
                    continue
            query = arguments.get("query") if isinstance(arguments, dict) else None
            if isinstance(query, str) and query.strip():
                queries.append(query.strip())
        if answer is not None and not queries:
            return actions.Action("answer", answer=answer)
        if not queries:
            return actions.Action("invalid", reason="no <answer> and no valid search tool call")
        return actions.Action(
            "search", queries=queries[:max_queries], dropped_queries=max(0, len(queries) - max_queries)
        )

    def observation(self, documents: Sequence[Sequence[Document]], max_doc_chars: int | None) -> str:
        responses = "\n".join(
            f"<tool_response>\n{format_documents(docs, max_doc_chars)}</tool_response>" for docs in documents
        )
        # The model's message ended with EOS (<|im_end|>); the results come back as the next turn.
        return f"\n<|im_start|>user\n{responses}<|im_end|>\n<|im_start|>assistant\n"

    @property
    def observation_close(self) -> str:
        return "</tool_response><|im_end|>\n<|im_start|>assistant\n"


PROTOCOLS: dict[str, type[AgentProtocol]] = {"tag": TagProtocol, "tool_call": ToolCallProtocol}
"""The protocols ``rollout.protocol`` chooses from, by name."""
