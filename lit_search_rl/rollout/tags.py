"""The tag protocol the agent speaks: think, search, information, answer.

The model writes ``<think> ... </think>``, then either ``<search> query </search>`` (several
queries in one turn are separated by ``|``) or ``<answer> ... </answer>``. The environment
answers a search with ``<information> ... </information>`` holding the retrieved passages in
Search-R1's ``Doc i(Title: ...) text`` form.

This module only knows text. Token ids, masks and the agent loop live elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence

from lit_search_rl.retrieval.base import Document

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


def user_prompt(question: str, max_queries: int = 3, instruction: str | None = None) -> str:
    """The user message that asks ``question``: ``instruction`` (Search-R1's, which explains the protocol, when
    unset) with ``{question}`` and ``{max_queries}`` filled in."""
    return (instruction or INSTRUCTION).format(question=question.strip(), max_queries=max_queries)


def check_instruction(instruction: str | None, field: str) -> None:
    """Raise naming ``field`` unless ``instruction`` is unset or a template that asks ``{question}`` and uses no
    placeholder but ``{question}`` and ``{max_queries}``."""
    if instruction is None:
        return
    if "{question}" not in instruction:
        raise ValueError(f"{field} must contain {{question}} (got {instruction!r})")
    try:
        instruction.format(question="", max_queries=1)
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(
            f"{field}: {instruction!r} is not a template of {{question}} and {{max_queries}} ({error!r})"
        ) from None


def search_call(queries: Sequence[str]) -> str:
    """The text of a search turn's call, e.g. ``<search> a | b </search>``."""
    return f"{SEARCH_OPEN} {f' {QUERY_SEPARATOR} '.join(q.strip() for q in queries)} {SEARCH_CLOSE}"


def truncate_text(text: str, max_chars: int | None) -> str:
    """``text`` cut to at most ``max_chars`` characters at a word boundary, marked with `` ...``."""
    if max_chars is None or len(text) <= max_chars:
        return text
    cut = text[: max(0, max_chars - 4)]
    if " " in cut:
        cut = cut[: cut.rindex(" ")]
    return cut + " ..."


def format_documents(documents: Sequence[Document], max_chars: int | None = None) -> str:
    """Passages in Search-R1's reading form, numbered across all queries of the turn.

    Each passage's text is cut to ``max_chars`` characters (unset: whole passages).
    """
    return "".join(
        f"Doc {i}(Title: {d.title}) {truncate_text(d.text, max_chars)}\n" for i, d in enumerate(documents, start=1)
    )


def information_block(documents: Sequence[Document], max_chars: int | None = None) -> str:
    """What the environment appends after a search call (never trained on)."""
    return f"\n\n{INFO_OPEN}{format_documents(documents, max_chars)}{INFO_CLOSE}\n\n"
