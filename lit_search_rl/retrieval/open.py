"""The one place that opens a retriever from what a user writes: an index folder, a server URL, or ``empty://``.

``model.retriever`` and the ``RetrieverService`` callback both come here, so both routes put the
same cache in front of the same backend: an index opened in this process gets an LRU cache of
``DEFAULT_CACHE_SIZE`` answers (the K rollouts of a question often repeat a search); a server
gets none unless asked for (it keeps its own).
"""

from __future__ import annotations

from pathlib import Path

from lit_search_rl.retrieval.base import EMPTY_RETRIEVER, EmptyRetriever, Retriever

DEFAULT_CACHE_SIZE = 10_000
"""(query, k) answers cached in front of an index opened in this process."""


def open_retriever(
    spec: str | Path, cache_size: int | None = None, device: str | None = None, timeout: float = 30.0
) -> Retriever:
    """A retriever for ``spec``: an index folder (``lit-search-rl index``), the URL of a Search-R1-compatible
    server, or ``empty://`` for one that returns no passage (a no-search control).

    Args:
        spec: what to open.
        cache_size: answers cached in front of it; 0 for none. Unset: ``DEFAULT_CACHE_SIZE`` for an index,
            none for a server.
        device: encoder device of a dense index.
        timeout: seconds each request to a server may take.
    """
    spec = str(spec)
    if spec == EMPTY_RETRIEVER:
        return EmptyRetriever()
    if spec.startswith(("http://", "https://")):
        from lit_search_rl.retrieval.http_client import HTTPRetriever

        retriever: Retriever = HTTPRetriever(spec, timeout=timeout)
        size = cache_size or 0
    else:
        from lit_search_rl.retrieval.index import load_retriever

        retriever = load_retriever(Path(spec).expanduser(), device=device)
        size = DEFAULT_CACHE_SIZE if cache_size is None else cache_size
    if size > 0:
        from lit_search_rl.retrieval.cache import CachedRetriever

        retriever = CachedRetriever(retriever, size)
    return retriever
