"""A cache of recent queries in front of any retriever.

The K rollouts of one question often send the same search; an LRU cache answers repeats
without a backend call, and a batch with some misses still costs one backend call.
"""

from __future__ import annotations

from collections import OrderedDict

from lit_search_rl.retrieval.base import Document, Retriever


class CachedRetriever(Retriever):
    """Wraps ``inner`` with an LRU cache of ``max_entries`` (query, k) answers.

    Attributes:
        hits: answers served from the cache.
        misses: answers asked of the backend.
    """

    def __init__(self, inner: Retriever, max_entries: int = 10_000) -> None:
        super().__init__()
        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1 (got {max_entries})")
        self.inner = inner
        self.max_k = inner.max_k
        self.max_entries = max_entries
        self._cache: OrderedDict[tuple[str, int], list[Document]] = OrderedDict()
        self.hits = self.misses = 0

    def _search(self, queries: list[str], k: int) -> list[list[Document]]:
        answers: dict[tuple[str, int], list[Document]] = {}
        for q in queries:
            if (q, k) in self._cache:
                self._cache.move_to_end((q, k))
                answers[(q, k)] = self._cache[(q, k)]
        missing = list(dict.fromkeys(q for q in queries if (q, k) not in answers))  # unique, in order
        self.hits += len(queries) - len(missing)
        self.misses += len(missing)
        if missing:
            for q, docs in zip(missing, self.inner.search(missing, k), strict=True):
                answers[(q, k)] = docs
                self._cache[(q, k)] = docs
                if len(self._cache) > self.max_entries:
                    self._cache.popitem(last=False)
        return [list(answers[(q, k)]) for q in queries]

    def close(self) -> None:
        self.inner.close()

    def forked(self) -> None:
        self.inner.forked()
