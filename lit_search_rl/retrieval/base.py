"""The retriever interface every backend implements.

A retriever answers a whole batch of queries in one call (the agent loop sends one call per
turn for all trajectories). ``search`` checks the arguments once for every backend: ``k <= 0``
is an error, ``k`` above the backend's cap is capped (and said once), and an empty query gets
an empty result without reaching the backend.

Work on a request can be stopped part way: ``stop_when(check)`` installs a check that the slow
steps of a backend (each encoder batch of a dense index) call through ``raise_if_stopped``; the
server uses it to stop a search whose client has gone or whose time is up.
"""

from __future__ import annotations

import contextvars
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_MAX_K = 100


class RetrievalError(RuntimeError):
    """Retrieval failed for a reason the caller cannot fix by retrying (bad index, server gone)."""


class SearchStopped(RetrievalError):
    """A search was stopped part way by the check of ``stop_when`` (its client left, or its time was up)."""


_stop_check: contextvars.ContextVar[Callable[[], str | None] | None] = contextvars.ContextVar(
    "retrieval_stop_check", default=None
)


@contextmanager
def stop_when(check: Callable[[], str | None]) -> Iterator[None]:
    """Within the block, ``raise_if_stopped`` raises ``SearchStopped(reason)`` once ``check()`` returns a reason."""
    token = _stop_check.set(check)
    try:
        yield
    finally:
        _stop_check.reset(token)


def raise_if_stopped() -> None:
    """Raise ``SearchStopped`` if the check installed by ``stop_when`` says to stop; backends call it between steps."""
    check = _stop_check.get()
    if check is not None and (reason := check()) is not None:
        raise SearchStopped(reason)


@dataclass(frozen=True)
class Document:
    """One retrieved passage.

    Attributes:
        id: corpus id.
        title: title without the quotes wiki-18 puts around it.
        text: passage text without the title line.
        score: retrieval score (higher is better), when the backend gives one.
        row: the whole corpus row (``id``, ``contents`` and any extra fields), as Search-R1 servers return it.
    """

    id: str
    title: str
    text: str
    score: float | None = None
    row: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_row(cls, row: dict[str, Any], score: float | None = None) -> Document:
        """A document from a corpus row ``{"id", "contents": "Title\\ntext", ...}``."""
        title, text = split_contents(str(row.get("contents", "")))
        return cls(id=str(row.get("id", "")), title=title, text=text, score=score, row=row)


def split_contents(contents: str) -> tuple[str, str]:
    """Split ``contents`` into title and text; wiki-18 titles are quoted and lose their quotes."""
    title, _, text = contents.partition("\n")
    title = title.strip()
    if len(title) >= 2 and title[0] == title[-1] == '"':
        title = title[1:-1]
    return title, text.strip()


class Retriever(ABC):
    """A batch of query strings and ``k`` in, a list of at most ``k`` documents per query out.

    Subclasses implement ``_search`` for non-empty queries and ``1 <= k <= max_k``.
    """

    max_k: int = DEFAULT_MAX_K

    def __init__(self) -> None:
        self._warned_cap = False

    def search(self, queries: Sequence[str], k: int = 3) -> list[list[Document]]:
        """The top ``k`` documents of each query, best first, in the order of ``queries``."""
        if isinstance(queries, str):
            raise TypeError("queries must be a sequence of strings, not one string")
        if k <= 0:
            raise ValueError(f"k must be at least 1 (got {k})")
        if k > self.max_k:
            if not self._warned_cap:
                log.warning("k=%d is above this retriever's cap of %d; using %d", k, self.max_k, self.max_k)
                self._warned_cap = True
            k = self.max_k
        results: list[list[Document]] = [[] for _ in queries]
        asked = [i for i, q in enumerate(queries) if q.strip()]
        if asked:
            for i, docs in zip(asked, self._search([queries[i].strip() for i in asked], k), strict=True):
                results[i] = docs
        return results

    @abstractmethod
    def _search(self, queries: list[str], k: int) -> list[list[Document]]:
        """Backend search for non-empty queries and a valid ``k``."""

    def close(self) -> None:
        """Release what the backend holds (connections, GPU memory); the default holds nothing."""
        return None

    def forked(self) -> None:
        """Called in a forked process (a rollout worker) before it searches: stop sharing with the parent what
        must not be shared (an HTTP client's open connections); the default shares nothing of the kind."""
        return None


EMPTY_RETRIEVER = "empty://"
"""The retriever spec (``model.retriever``) of ``EmptyRetriever``."""


class EmptyRetriever(Retriever):
    """Answers every query with no passage: the control that shows how much an agent answers from memory.

    An agent that truly searches should score far lower with it than with a real index.
    """

    def _search(self, queries: list[str], k: int) -> list[list[Document]]:
        return [[] for _ in queries]
