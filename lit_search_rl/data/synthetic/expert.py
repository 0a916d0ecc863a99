"""Render the expert's plan as a trajectory in the tag protocol, and replay it against a corpus.

A trajectory is a list of segments ``(text, trainable)``: the model's own turns are trainable,
the information blocks the environment inserts are not. The SFT data module tokenizes the
segments one by one, exactly as the agent loop concatenates turns, so both see the same ids.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

from lit_search_rl.data.synthetic.questions import Search, Step
from lit_search_rl.retrieval.base import Document, Retriever, split_contents
from lit_search_rl.rollout.tags import (
    ANSWER_CLOSE,
    ANSWER_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
    information_block,
    search_call,
)

Segment = tuple[str, bool]
"""A piece of trajectory text and whether the policy is trained on it."""


def render_trajectory(
    steps: Sequence[Step], documents_for: Callable[[Sequence[Search]], list[Document]]
) -> list[Segment]:
    """The expert's turns as segments; ``documents_for`` plays the search engine for one turn."""
    segments: list[Segment] = []
    for step in steps:
        turn = f"{THINK_OPEN} {step.think} {THINK_CLOSE}\n"
        if step.answer is not None:
            segments.append((f"{turn}{ANSWER_OPEN} {step.answer} {ANSWER_CLOSE}", True))
            break
        segments.append((turn + search_call([s.query for s in step.searches]), True))
        segments.append((information_block(documents_for(step.searches)), False))
    return segments


def gold_documents(corpus_contents: Mapping[str, str]) -> Callable[[Sequence[Search]], list[Document]]:
    """A search engine that returns each query's first gold passage (no retriever needed)."""

    def documents_for(searches: Sequence[Search]) -> list[Document]:
        return [Document(s.doc_ids[0], *split_contents(corpus_contents[s.doc_ids[0]])) for s in searches]

    return documents_for


def retrieved_documents(retriever: Retriever, k: int) -> Callable[[Sequence[Search]], list[Document]]:
    """A search engine that answers each query with ``retriever``'s top ``k``, as the agent sees it at run time."""

    def documents_for(searches: Sequence[Search]) -> list[Document]:
        return [d for docs in retriever.search([s.query for s in searches], k) for d in docs]

    return documents_for


def _mentions(text: str, name: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text) is not None


def replay(question: str, rule: str, steps: Sequence[Step], corpus_contents: Mapping[str, str]) -> str:
    """Follow the plan with only what a searcher could know, and return the answer it reaches.

    Each query must be about a name that the question or an already-read passage mentions,
    and each fact it learns must be written in every passage listed as stating it. Raises ``ValueError``
    at the first step that needs knowledge the searcher could not have had.
    """
    known = question
    learnt: list[Search] = []
    for n, step in enumerate(steps):
        if step.answer is not None:
            return _conclude(rule, learnt)
        read = []
        for search in step.searches:
            if not _mentions(known, search.about) or not _mentions(search.query, search.about):
                raise ValueError(f"step {n}: query {search.query!r} is about {search.about!r}, which is not known yet")
            for doc_id in search.doc_ids:
                if not _mentions(corpus_contents[doc_id], search.learns):
                    raise ValueError(f"step {n}: passage {doc_id} does not state {search.learns!r}")
            # The searcher reads one passage that states the fact: the entity's own.
            read.append(corpus_contents[search.doc_ids[0]])
            learnt.append(search)
        known += "\n" + "\n".join(read)
    raise ValueError("the plan never answers")


def _conclude(rule: str, learnt: Sequence[Search]) -> str:
    if rule == "last":
        return learnt[-1].learns
    a, b = learnt[-2], learnt[-1]
    if rule == "same":
        return "yes" if a.learns == b.learns else "no"
    first, second = (a, b) if int(a.learns) < int(b.learns) else (b, a)
    return (first if rule == "earlier" else second).about


def steps_from_rows(rows: Sequence[Mapping]) -> list[Step]:
    """Rebuild the expert's steps from the ``steps`` field of an ``sft.jsonl`` row."""
    return [
        Step(think=r["think"], searches=[Search(**s) for s in r.get("searches", [])], answer=r.get("answer"))
        for r in rows
    ]
