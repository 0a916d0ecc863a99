"""A retrieval server that speaks the Search-R1 API, on the standard library's HTTP server.

``POST /retrieve`` takes ``{"queries": [...], "topk": 3, "return_scores": false}`` and answers
``{"result": [[{"document": row, "score": s}, ...], ...]}`` with scores, or ``{"result":
[[row, ...], ...]}`` without. ``row`` is the whole corpus row, as Search-R1 returns it.
Omitted, null or 0 ``topk`` means 3, and an integral number in any JSON form (``3``, ``3.0``,
``"3"``) is taken, as in Search-R1. Unlike Search-R1's server, a negative or fractional
``topk`` is a 400, a ``topk`` above the cap is capped instead of padded, an empty query gets no
hits, and ``return_scores: false`` works. ``GET /health`` reports the index.

Every bad request gets a 4xx JSON ``{"error": ...}`` (a wrong method on a known path a 405 with
``Allow``); a failure inside the retriever gets a 500 JSON answer and the server keeps serving.
The body may come with ``Content-Length`` or chunked, under the same size bound. The work of
one request is bounded: a search is stopped between encoder batches when its client has closed
the connection (no answer) or when it has run ``max_seconds`` (a 503).
"""

from __future__ import annotations

import json
import logging
import math
import re
import select
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, BinaryIO

from lit_search_rl.checks import require_at_least
from lit_search_rl.retrieval.base import Retriever, SearchStopped, stop_when

log = logging.getLogger(__name__)
DEFAULT_TOPK = 3
ROUTES = {"/retrieve": "POST", "/health": "GET"}
"""Each path and the one method it answers; other methods there get a 405."""
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")
_CHUNK_SIZE = re.compile(rb"[0-9a-fA-F]{1,16}")


@dataclass
class ServerLimits:
    """Bounds on what one request may ask."""

    max_body_bytes: int = 1 << 20
    """Largest request body accepted (413 above)."""
    max_queries: int = 1024
    """Most queries in one request (413 above)."""
    max_topk: int = 100
    """Largest ``topk`` served; larger requests are capped."""
    max_seconds: float = 120.0
    """Longest a search may run; a request past it is stopped and gets a 503."""

    def __post_init__(self) -> None:
        require_at_least(self, ("max_body_bytes", "max_queries", "max_topk"))
        if not self.max_seconds > 0:
            raise ValueError(f"--max_seconds must be positive (got {self.max_seconds})")


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _shown(value: Any) -> str:
    """A request value as it appears in an error message, short."""
    text = json.dumps(value, ensure_ascii=True) if not isinstance(value, float) or math.isfinite(value) else str(value)
    return text if len(text) <= 40 else text[:40] + "..."


def parse_topk(value: Any) -> int:
    """``topk`` of a request: null or 0 is the default; an integer, an integral float or a decimal string counts."""
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        number: Any = int(value.strip())
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    else:
        number = value
    if number is None or number == 0:
        return DEFAULT_TOPK
    if isinstance(number, bool) or not isinstance(number, int):
        raise _BadRequest(400, f"'topk' must be an integer (got {_shown(value)})")
    if number < 0:
        raise _BadRequest(400, f"'topk' must not be negative (got {number})")
    return number


def parse_request(body: bytes, limits: ServerLimits) -> tuple[list[str], int, bool]:
    """Validate a ``/retrieve`` body; returns (queries, topk, return_scores) or raises ``_BadRequest``.

    ``topk`` is returned as asked (0 or null already mapped to the default); the caller caps it.
    """
    try:
        request = json.loads(body)
    except RecursionError:  # nesting deeper than the parser's stack
        raise _BadRequest(400, "the body is not valid JSON (nested too deeply)") from None
    except ValueError as e:  # bad JSON, bad UTF-8, or an integer longer than Python converts
        reason = "an integer with too many digits" if "digits" in str(e) else None
        raise _BadRequest(400, "the body is not valid JSON" + (f" ({reason})" if reason else "")) from None
    if not isinstance(request, dict):
        raise _BadRequest(400, "the body must be a JSON object")
    queries = request.get("queries")
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise _BadRequest(400, "'queries' must be a list of strings")
    if len(queries) > limits.max_queries:
        raise _BadRequest(413, f"at most {limits.max_queries} queries per request (got {len(queries)})")
    for i, query in enumerate(queries):
        try:
            query.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: JSON can carry it, text encoders cannot
            raise _BadRequest(
                400, f"queries[{i}] is not valid Unicode (a lone surrogate): {ascii(query[:60])}"
            ) from None
    topk = parse_topk(request.get("topk"))
    return_scores = request.get("return_scores", False)
    if not isinstance(return_scores, bool):
        raise _BadRequest(400, "'return_scores' must be true or false")
    return queries, topk, return_scores


def read_chunked(rfile: BinaryIO, max_bytes: int) -> bytes:
    """A body in the chunked transfer coding, at most ``max_bytes`` long; ``_BadRequest`` when malformed or larger."""
    body = bytearray()
    while True:
        line = rfile.readline(1024)
        size_text = line.split(b";", 1)[0].strip()  # chunk extensions are ignored
        if not line.endswith(b"\n") or not _CHUNK_SIZE.fullmatch(size_text):
            raise _BadRequest(400, "the chunked body is malformed (bad chunk size line)")
        size = int(size_text, 16)
        if size == 0:
            break
        if len(body) + size > max_bytes:
            raise _BadRequest(413, f"the body is larger than {max_bytes} bytes")
        chunk = rfile.read(size)
        if len(chunk) < size or rfile.readline(3) not in (b"\r\n", b"\n"):
            raise _BadRequest(400, "the chunked body is malformed (a chunk is cut short)")
        body += chunk
    for _ in range(64):  # trailer fields, ignored, up to the empty line
        line = rfile.readline(8192)
        if line in (b"\r\n", b"\n"):
            return bytes(body)
        if not line.endswith(b"\n"):
            break
    raise _BadRequest(400, "the chunked body is malformed (trailer)")


def client_gone(sock: socket.socket) -> bool:
    """Whether the peer of ``sock`` has closed the connection (without reading what it sent next)."""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):  # reset, or already closed here
        return True


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

    def _answer(self, body: bytes, gone: Callable[[], bool] = lambda: False) -> tuple[int, Any] | None:
        """Status and JSON answer of a ``/retrieve`` body; None when the client left before the search ended."""
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
        deadline = time.monotonic() + self.limits.max_seconds

        def stop() -> str | None:
            if gone():
                return "gone"
            return "late" if time.monotonic() > deadline else None

        try:
            with stop_when(stop):
                results = self.retriever.search(queries, topk) if queries else []
        except SearchStopped as e:
            if str(e) == "gone":
                log.info("stopped a search of %d queries: the client closed the connection", len(queries))
                return None
            log.warning(
                "stopped a search of %d queries after %gs (--max_seconds)", len(queries), self.limits.max_seconds
            )
            return 503, {"error": f"the search of {len(queries)} queries took longer than the server's limit of "
                                  f"{self.limits.max_seconds:g} s; send fewer queries per request"}  # fmt: skip
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
            _started = False  # whether the answer's status line went out

            def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
                try:
                    text = json.dumps(payload, ensure_ascii=False)
                    data = text.encode("utf-8")
                except UnicodeEncodeError:  # a corpus row with a lone surrogate: escaped, the JSON stays valid
                    data = json.dumps(payload, ensure_ascii=True).encode("ascii")
                self._started = True
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _route(self) -> None:
                self._started = False
                try:
                    self._dispatch()
                except (ConnectionError, TimeoutError):  # the client left while being answered
                    self.close_connection = True
                except Exception:  # one broken request must not take the connection down without an answer
                    log.exception("error while answering %s %s", self.command, self.path)
                    self.close_connection = True
                    if not self._started:
                        self._send(500, {"error": "internal server error"})

            def _dispatch(self) -> None:
                path = self.path.split("?")[0].rstrip("/")
                allowed = ROUTES.get(path)
                if allowed is None or self.command != allowed:
                    self._drain()
                    if allowed is None:
                        return self._send(404, {"error": f"no such endpoint: {self.command} {self.path}"})
                    return self._send(405, {"error": f"{path} takes {allowed}, not {self.command}"}, {"Allow": allowed})
                if self.command == "GET":
                    return self._send(200, {"status": "ok", **server.info})
                try:
                    body = self._read_body()
                except _BadRequest as e:
                    self.close_connection = True  # the rest of the body is not read, so the connection is spent
                    return self._send(e.status, {"error": str(e)})
                answer = server._answer(body, lambda: client_gone(self.connection))
                if answer is None:
                    self.close_connection = True
                    return
                self._send(*answer)

            def _read_body(self) -> bytes:
                limit = server.limits.max_body_bytes
                coding = self.headers.get("Transfer-Encoding")
                length = self.headers.get("Content-Length")
                if coding is not None:
                    if length is not None:  # two framings: refused, as a proxy might read the other one
                        raise _BadRequest(400, "a body with both Content-Length and Transfer-Encoding")
                    if coding.strip().lower() != "chunked":
                        raise _BadRequest(501, f"transfer coding {coding!r} is not supported (only chunked)")
                    return read_chunked(self.rfile, limit)
                if length is None or not length.strip().isdigit():
                    raise _BadRequest(411, "a Content-Length header or a chunked body is required")
                if int(length) > limit:
                    raise _BadRequest(413, f"the body is larger than {limit} bytes")
                return self.rfile.read(int(length))

            def _drain(self) -> None:
                length = self.headers.get("Content-Length")
                if self.headers.get("Transfer-Encoding") is None and (length is None or length.strip() == "0"):
                    return
                if length and length.strip().isdigit() and int(length) <= server.limits.max_body_bytes:
                    self.rfile.read(int(length))
                else:
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _route  # noqa: N815

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
