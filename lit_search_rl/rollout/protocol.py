"""The tag protocol the agent speaks: think, search, information, answer.

The model writes ``<think> ... </think>``, then either ``<search> query </search>`` (several
queries in one turn are separated by ``|``) or ``<answer> ... </answer>``. The environment
answers a search with ``<information> ... </information>`` holding the retrieved passages in
Search-R1's ``Doc i(Title: ...) text`` form.

This module only knows text. Token ids, masks and the agent loop live elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
INFO_OPEN, INFO_CLOSE = "<information>", "</information>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
TAGS: tuple[str, ...] = (
    THINK_OPEN,
    THINK_CLOSE,
    SEARCH_OPEN,
    SEARCH_CLOSE,
    INFO_OPEN,
    INFO_CLOSE,
    ANSWER_OPEN,
    ANSWER_CLOSE,
)
QUERY_SEPARATOR = "|"
"""Separates the queries of one turn inside a single ``<search>`` block."""

INSTRUCTION = (
    "Answer the question. Think inside <think> and </think> whenever you get new information. "
    "To look something up, write <search> query </search>; to search several things at once, separate "
    "up to {max_queries} queries with |. Results come back between <information> and </information>. "
    "Search as often as you need. When you know the answer, write it inside <answer> and </answer> with "
    "no explanation, for example <answer> Paris </answer>.\nQuestion: {question}"
)


@dataclass(frozen=True)
class Document:
    """One retrieved passage as the agent sees it."""

    id: str
    title: str
    text: str
    score: float | None = None


def split_contents(contents: str) -> tuple[str, str]:
    """Split a corpus ``contents`` field into title and text; wiki-18 titles are quoted and lose their quotes."""
    title, _, text = contents.partition("\n")
    title = title.strip()
    if len(title) >= 2 and title[0] == title[-1] == '"':
        title = title[1:-1]
    return title, text.strip()


def user_prompt(question: str, max_queries: int = 3) -> str:
    """The user message that asks ``question`` and explains the protocol."""
    return INSTRUCTION.format(question=question.strip(), max_queries=max_queries)


def search_call(queries: Sequence[str]) -> str:
    """The text of a search turn's call, e.g. ``<search> a | b </search>``."""
    return f"{SEARCH_OPEN} {f' {QUERY_SEPARATOR} '.join(q.strip() for q in queries)} {SEARCH_CLOSE}"


def format_documents(documents: Sequence[Document]) -> str:
    """Passages in Search-R1's reading form, numbered across all queries of the turn."""
    return "".join(f"Doc {i}(Title: {d.title}) {d.text}\n" for i, d in enumerate(documents, start=1))


def information_block(documents: Sequence[Document]) -> str:
    """What the environment appends after a search call (never trained on)."""
    return f"\n\n{INFO_OPEN}{format_documents(documents)}{INFO_CLOSE}\n\n"
