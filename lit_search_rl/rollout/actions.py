"""Reading the model's turn: what action did it take?

Model text is untrusted. Only text outside ``<think>`` blocks and outside any
``<information>`` block the model wrote itself can be an action; an ``<answer>`` inside a
thought is not an answer, and an information block written by the model is never taken for
retrieval output. The action is the last complete ``<search>`` or ``<answer>`` block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from lit_search_rl.rollout.tags import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    INFO_CLOSE,
    INFO_OPEN,
    QUERY_SEPARATOR,
    SEARCH_CLOSE,
    SEARCH_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
)


@dataclass(frozen=True)
class Action:
    """What a turn asks for.

    Attributes:
        kind: ``search``, ``answer``, or ``invalid`` (no complete action outside thoughts).
        queries: the search queries, at most ``max_queries`` (search only).
        answer: the answer text (answer only).
        dropped_queries: queries beyond ``max_queries`` that were cut on purpose.
        reason: why a turn is invalid.
    """

    kind: Literal["search", "answer", "invalid"]
    queries: list[str] = field(default_factory=list)
    answer: str | None = None
    dropped_queries: int = 0
    reason: str = ""


def _strip_blocks(text: str, open_tag: str, close_tag: str) -> str:
    """Remove ``open ... close`` blocks; an unterminated block runs to the end of the text."""
    pattern = re.compile(re.escape(open_tag) + r".*?(?:" + re.escape(close_tag) + r"|\Z)", re.DOTALL)
    return pattern.sub(" ", text)


def visible_text(text: str) -> str:
    """The model's text without thoughts and without information blocks it wrote itself."""
    return _strip_blocks(_strip_blocks(text, THINK_OPEN, THINK_CLOSE), INFO_OPEN, INFO_CLOSE)


def _last_block(text: str, open_tag: str, close_tag: str) -> tuple[int, str] | None:
    """(end position, inner text) of the last complete block; nested openings keep the innermost."""
    end = text.rfind(close_tag)
    if end < 0:
        return None
    start = text.rfind(open_tag, 0, end)
    if start < 0:
        return None
    return end + len(close_tag), text[start + len(open_tag) : end]


def extract_answer(text: str) -> str | None:
    """The last complete ``<answer>`` of the model's own text, outside thoughts; None when there is none."""
    block = _last_block(visible_text(text), ANSWER_OPEN, ANSWER_CLOSE)
    return None if block is None else block[1].strip()


def parse_action(turn_text: str, max_queries: int = 3) -> Action:
    """The action of one generated turn of the tag protocol."""
    visible = visible_text(turn_text)
    search = _last_block(visible, SEARCH_OPEN, SEARCH_CLOSE)
    answer = _last_block(visible, ANSWER_OPEN, ANSWER_CLOSE)
    if answer is not None and (search is None or answer[0] > search[0]):
        return Action("answer", answer=answer[1].strip())
    if search is None:
        return Action("invalid", reason="no complete <search> or <answer> outside <think>")
    queries = [q.strip() for q in search[1].split(QUERY_SEPARATOR)]
    queries = [q for q in queries if q]
    if not queries:
        return Action("invalid", reason="empty <search>")
    return Action("search", queries=queries[:max_queries], dropped_queries=max(0, len(queries) - max_queries))
