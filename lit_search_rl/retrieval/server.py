"""A retrieval server that speaks the Search-R1 API, on the standard library's HTTP server.

``POST /retrieve`` takes ``{"queries": [...], "topk": 3, "return_scores": false}`` and answers
``{"result": [[{"document": row, "score": s}, ...], ...]}`` with scores, or ``{"result":
[[row, ...], ...]}`` without. ``row`` is the whole corpus row, as Search-R1 returns it.
Omitted, null or 0 ``topk`` means 3, as in Search-R1. Unlike Search-R1's server, a negative
``topk`` is a 400, a ``topk`` above the cap is capped instead of padded, and
``return_scores: false`` works. ``GET /health`` reports the index.

Every bad request gets a 4xx JSON ``{"error": ...}``; a failure inside the retriever gets a
500 JSON answer and the server keeps serving.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from lit_search_rl.retrieval.base import Retriever

log = logging.getLogger(__name__)
DEFAULT_TOPK = 3


@dataclass
class ServerLimits:
    """Bounds on what one request may ask."""

    max_body_bytes: int = 1 << 20
    """Largest request body accepted (413 above)."""
    max_queries: int = 1024
    """Most queries in one request (413 above)."""
    max_topk: int = 100
    """Largest ``topk`` served; larger requests are capped."""


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def parse_request(body: bytes, limits: ServerLimits) -> tuple[list[str], int, bool]:
    """Validate a ``/retrieve`` body; returns (queries, topk, return_scores) or raises ``_BadRequest``.

    ``topk`` is returned as asked (0 or null already mapped to the default); the caller caps it.
    """
    try:
        request = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _BadRequest(400, "the body is not valid JSON") from None
    if not isinstance(request, dict):
        raise _BadRequest(400, "the body must be a JSON object")
    queries = request.get("queries")
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise _BadRequest(400, "'queries' must be a list of strings")
    if len(queries) > limits.max_queries:
        raise _BadRequest(413, f"at most {limits.max_queries} queries per request (got {len(queries)})")
    topk = request.get("topk")
    if topk is None or topk == 0:
        topk = DEFAULT_TOPK
    if isinstance(topk, bool) or not isinstance(topk, int):
        raise _BadRequest(400, "'topk' must be an integer")
    if topk < 0:
        raise _BadRequest(400, f"'topk' must not be negative (got {topk})")
    return_scores = request.get("return_scores", False)
    if not isinstance(return_scores, bool):
        raise _BadRequest(400, "'return_scores' must be true or false")
    return queries, topk, return_scores


class RetrievalServer:
    """Serves a retriever over HTTP until ``shutdown``.

    Args:
        retriever: what answers the queries.
        host: address to bind; loopback unless told otherwise.
        port: port to bind; 0 picks a free one (see ``url``).
        limits: request bounds.
        info: extra fields for ``/health`` (index kind, size).
    """

    def __init__(
        self,
        retriever: Retriever,
        host: str = "127.0.0.1",
        port: int = 8000,
        limits: ServerLimits | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.retriever = retriever
        self.limits = limits or ServerLimits()
        self.info = info or {}
        self._warned_cap = False
        self.httpd = ThreadingHTTPServer((host, port), self._handler_class())
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def _answer(self, body: bytes) -> tuple[int, Any]:
        try:
            queries, topk, return_scores = parse_request(body, self.limits)
        except _BadRequest as e:
            return e.status, {"error": str(e)}
        if topk > self.limits.max_topk:
            if not self._warned_cap:
                log.warning(
                    "topk=%d is above the cap of %d; serving %d", topk, self.limits.max_topk, self.limits.max_topk
                )
                self._warned_cap = True
            topk = self.limits.max_topk
        try:
            results = self.retriever.search(queries, topk) if queries else []
        except Exception as e:  # the server must outlive a failing search
            log.exception("retrieval failed")
            return 500, {"error": f"retrieval failed: {type(e).__name__}: {e}"}
        if return_scores:
            return 200, {"result": [[{"document": d.row, "score": d.score} for d in docs] for docs in results]}
        return 200, {"result": [[d.row for d in docs] for docs in results]}

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, so clients reuse connections
            # Headers and body go out in separate writes; with Nagle's algorithm on, the body
            # then waits for the client's delayed ACK (about 40 ms per request on Linux).
            disable_nagle_algorithm = True

            def _send(self, status: int, payload: Any) -> None:
                data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 - the http.server naming
                if self.path.split("?")[0].rstrip("/") != "/retrieve":
                    self._drain()
                    return self._send(404, {"error": f"no such endpoint: POST {self.path}"})
                length = self.headers.get("Content-Length")
                if length is None or not length.isdigit():
                    self.close_connection = True
                    return self._send(411, {"error": "a Content-Length header is required"})
                if int(length) > server.limits.max_body_bytes:
                    self.close_connection = True  # the body is not read, so the connection cannot be reused
                    return self._send(413, {"error": f"the body is larger than {server.limits.max_body_bytes} bytes"})
                self._send(*server._answer(self.rfile.read(int(length))))

            def do_GET(self) -> None:  # noqa: N802
                if self.path.split("?")[0].rstrip("/") != "/health":
                    return self._send(404, {"error": f"no such endpoint: GET {self.path}"})
                self._send(200, {"status": "ok", **server.info})

            def _drain(self) -> None:
                length = self.headers.get("Content-Length")
                if length and length.isdigit() and int(length) <= server.limits.max_body_bytes:
                    self.rfile.read(int(length))
                else:
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("%s - %s", self.address_string(), format % args)

        return Handler

    def start(self) -> RetrievalServer:
        """Serve in a background thread (tests, in-process use); returns self."""
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="retrieval-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted."""
        self.httpd.serve_forever()

    def shutdown(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
