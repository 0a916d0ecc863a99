"""A retriever that asks a Search-R1-compatible server over HTTP.

Speaks ``POST /retrieve`` with ``{"queries": [...], "topk": k, "return_scores": true}`` and
reads both answer shapes (with scores: ``{"document": row, "score": s}``; without: ``row``),
so it works with Search-R1's own servers and with ``lit-search-rl serve-retriever``. One
connection pool is reused across calls; each request has a total deadline (``timeout``, to the
last byte of the answer). What can succeed when asked again is retried with exponential backoff
a bounded number of times (see ``lit_search_rl.http_retry``); every failure, a malformed answer
included, raises ``RetrievalError``.
"""

from __future__ import annotations

from typing import Any

from lit_search_rl.http_retry import get_json, new_session, post_json
from lit_search_rl.retrieval.base import Document, RetrievalError, Retriever

_POOL_SIZE = 8  # connections a client session pools per host (one session per process: see forked)


def retrieve_url(url: str) -> str:
    """``http://host:port`` or ``.../retrieve`` -> the ``/retrieve`` endpoint."""
    url = url.rstrip("/")
    return url if url.endswith("/retrieve") else f"{url}/retrieve"


class HTTPRetriever(Retriever):
    """Client of a Search-R1 retrieval server.

    Args:
        url: server address, with or without the ``/retrieve`` path.
        timeout: seconds for each request, from connecting to the last byte of the answer.
        max_retries: further attempts after a connection error or a 502, 503 or 504 answer (a 500 or a
            request past its deadline is asked again once at most).
        backoff: seconds before the first retry; doubled for each next one.
        max_queries_per_request: larger batches are split into several requests.
        max_k: the largest ``k`` asked for; larger ones are capped.
    """

    def __init__(
        self,
        url: str,
        timeout: float = 30.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_queries_per_request: int = 512,
        max_k: int = 100,
    ) -> None:
        super().__init__()
        self.url = retrieve_url(url)
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.max_queries_per_request = max_queries_per_request
        self.max_k = max_k
        self.session = new_session(pool_maxsize=_POOL_SIZE)

    def _search(self, queries: list[str], k: int) -> list[list[Document]]:
        results: list[list[Document]] = []
        for start in range(0, len(queries), self.max_queries_per_request):
            chunk = queries[start : start + self.max_queries_per_request]
            results += self._post({"queries": chunk, "topk": k, "return_scores": True}, len(chunk))
        return results

    def _post(self, payload: dict[str, Any], expected: int) -> list[list[Document]]:
        return post_json(self.session, self.url, payload, what="retrieval server", error=RetrievalError,
                         timeout=self.timeout, max_retries=self.max_retries, backoff=self.backoff,
                         parse=lambda answer: parse_result(answer, expected))  # fmt: skip

    def health(self) -> dict[str, Any]:
        """The server's ``/health`` answer; raises ``RetrievalError`` when it cannot be reached."""
        url = self.url[: -len("/retrieve")] + "/health"
        answer = get_json(self.session, url, what="retrieval server health check", error=RetrievalError,
                          timeout=self.timeout)  # fmt: skip
        if not isinstance(answer, dict):
            raise RetrievalError(f"retrieval server health check at {url} failed: the answer is not a JSON object")
        return answer

    def close(self) -> None:
        self.session.close()

    def forked(self) -> None:
        # The inherited session's pooled connections are the parent's sockets too: two processes writing
        # requests to one socket would read each other's answers. A new session opens its own.
        self.session = new_session(pool_maxsize=_POOL_SIZE)


def parse_result(answer: Any, expected: int) -> list[list[Document]]:
    """Documents from a ``/retrieve`` answer of ``expected`` queries; ``ValueError`` says what is wrong with it."""
    result = answer.get("result") if isinstance(answer, dict) else None
    if not isinstance(result, list) or len(result) != expected:
        raise ValueError(f"without a 'result' list of {expected} entries")
    parsed = []
    for i, hits in enumerate(result):
        if not isinstance(hits, list):
            raise ValueError(f"with result[{i}] not a list of hits")
        docs = []
        for j, hit in enumerate(hits):
            # With scores a hit is {"document": row, "score": s}; without, the row itself.
            row, score = (hit.get("document"), hit.get("score")) if isinstance(hit, dict) and "document" in hit else (
                hit, None)  # fmt: skip
            if not isinstance(row, dict):
                raise ValueError(f"with result[{i}][{j}] not a corpus row (a JSON object)")
            if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
                raise ValueError(f"with result[{i}][{j}] a score that is not a number")
            docs.append(Document.from_row(row, None if score is None else float(score)))
        parsed.append(docs)
    return parsed
