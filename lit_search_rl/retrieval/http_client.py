"""A retriever that asks a Search-R1-compatible server over HTTP.

Speaks ``POST /retrieve`` with ``{"queries": [...], "topk": k, "return_scores": true}`` and
reads both answer shapes (with scores: ``{"document": row, "score": s}``; without: ``row``),
so it works with Search-R1's own servers and with ``lit-search-rl serve-retriever``. One
connection pool is reused across calls; connection errors, timeouts and 5xx answers are
retried with exponential backoff a bounded number of times, then raise ``RetrievalError``.
"""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import HTTPAdapter

from lit_search_rl.http_retry import post_json
from lit_search_rl.retrieval.base import Document, RetrievalError, Retriever


def retrieve_url(url: str) -> str:
    """``http://host:port`` or ``.../retrieve`` -> the ``/retrieve`` endpoint."""
    url = url.rstrip("/")
    return url if url.endswith("/retrieve") else f"{url}/retrieve"


class HTTPRetriever(Retriever):
    """Client of a Search-R1 retrieval server.

    Args:
        url: server address, with or without the ``/retrieve`` path.
        timeout: seconds to wait for each answer.
        max_retries: further attempts after a connection error, timeout or 5xx answer.
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
        self.session = requests.Session()
        self.session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=8, max_retries=0))
        self.session.mount("https://", HTTPAdapter(pool_connections=1, pool_maxsize=8, max_retries=0))

    def _search(self, queries: list[str], k: int) -> list[list[Document]]:
        results: list[list[Document]] = []
        for start in range(0, len(queries), self.max_queries_per_request):
            chunk = queries[start : start + self.max_queries_per_request]
            answer = self._post({"queries": chunk, "topk": k, "return_scores": True})
            results += _parse_result(answer, len(chunk), self.url)
        return results

    def _post(self, payload: dict[str, Any]) -> Any:
        return post_json(self.session, self.url, payload, what="retrieval server", error=RetrievalError,
                         timeout=self.timeout, max_retries=self.max_retries, backoff=self.backoff)  # fmt: skip

    def health(self) -> dict[str, Any]:
        """The server's ``/health`` answer; raises ``RetrievalError`` when it cannot be reached."""
        url = self.url[: -len("/retrieve")] + "/health"
        try:
            response = self.session.get(url, timeout=self.timeout)
            response.raise_for_status()
            return response.json()
        except (requests.RequestException, ValueError) as e:
            raise RetrievalError(f"retrieval server health check at {url} failed: {e}") from None

    def close(self) -> None:
        self.session.close()


def _parse_result(answer: Any, expected: int, url: str) -> list[list[Document]]:
    result = answer.get("result") if isinstance(answer, dict) else None
    if not isinstance(result, list) or len(result) != expected:
        raise RetrievalError(f"retrieval server {url} answered without a 'result' list of {expected} entries")
    parsed = []
    for hits in result:
        docs = []
        for hit in hits:
            if isinstance(hit, dict) and "document" in hit:
                docs.append(Document.from_row(hit["document"], hit.get("score")))
            else:
                docs.append(Document.from_row(hit))
        parsed.append(docs)
    return parsed
