"""JSON over HTTP with a deadline per request and bounded retries, shared by the retrieval client and the LLM judge.

Every attempt has a total deadline (``timeout``): connecting, sending and reading the whole answer.
A read timeout alone applies to each read, so a server that trickles a byte every few seconds
would hold the caller forever; here a watchdog shuts the connection's socket down when the
deadline passes, wherever the attempt is blocked.

Only what can succeed when asked again is retried, with exponential backoff:

- a connection error (refused, reset, closed before the answer was complete) and the statuses
  502, 503, 504 and ``retry_statuses`` (the judge's 429): up to ``max_retries`` times; a
  ``Retry-After`` header in seconds lengthens the wait (up to ``MAX_RETRY_AFTER``);
- a 500 once: an internal error of the server usually repeats on every attempt;
- an attempt past its deadline once, after the backoff: the server may still be working on the
  first copy, and asking again at once would double its load.

Any other status fails at once. Every failure is one line that names the server, and for a
connection error the cause's last line whole ("Connection refused").
"""

from __future__ import annotations

import contextlib
import math
import re
import socket
import threading
import time
from collections.abc import Callable, Collection
from typing import Any, TypeVar

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.poolmanager import ProxyManager

T = TypeVar("T")

RETRY_STATUSES = frozenset({502, 503, 504})
"""Statuses of a server (or a proxy in front of it) that is busy or restarting: retried like connection errors."""
MAX_RETRY_AFTER = 30.0
"""Longest wait a server's ``Retry-After`` can ask for, in seconds."""
CONNECT_TIMEOUT = 10.0
"""Longest wait for a connection; an address that drops packets fails fast even with a long deadline."""

_local = threading.local()


def one_line(text: str, limit: int = 200) -> str:
    """``text`` with its whitespace collapsed, cut to ``limit`` characters."""
    return " ".join(text.split())[:limit]


def body_start(text: str, limit: int = 120) -> str:
    """The start of an answer's body, quoted, for error messages."""
    flat = one_line(text, limit + 1)
    return repr(flat if len(flat) <= limit else flat[:limit] + "...") if flat else "an empty body"


_OBJECT_REPR = re.compile(r"<[\w.]+ object at 0x[0-9a-f]+>:?\s*")


def cause_text(e: BaseException) -> str:
    """The innermost cause of a requests/urllib3 error, its last line whole: ``[Errno 111] Connection refused``.

    requests wraps the cause in two or three layers whose text starts with the pool and the URL;
    cutting that text to a fixed length hides the one part that says what happened.
    """
    seen: set[int] = set()
    inner: BaseException = e
    while id(inner) not in seen:
        seen.add(id(inner))
        nested = getattr(inner, "reason", None)  # urllib3's MaxRetryError
        if not isinstance(nested, BaseException) and inner.args and isinstance(inner.args[0], BaseException):
            nested = inner.args[0]  # requests' ConnectionError(MaxRetryError(...))
        if not isinstance(nested, BaseException):
            nested = inner.__cause__ or inner.__context__
        if not isinstance(nested, BaseException):
            break
        inner = nested
    lines = [line.strip() for line in _OBJECT_REPR.sub("", str(inner)).splitlines() if line.strip()]
    text = lines[-1] if lines else type(inner).__name__
    return text.strip("()'\" ")[:500]


class _Deadline:
    """Shuts down the socket of the connection in use by this thread's request when ``seconds`` have passed."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._done = False
        self._connection: HTTPConnection | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        _local.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()
        _local.deadline = None

    def attach(self, connection: HTTPConnection) -> None:
        """Called by the connection as the request starts and once it is connected."""
        with self._lock:
            self._connection = connection
            connection._deadline_owner = self  # type: ignore[attr-defined]
            if self.expired:
                _shut(connection)

    def _expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            connection = self._connection
            # A pooled connection may already serve another request of this session; only ours is cut.
            if connection is not None and getattr(connection, "_deadline_owner", None) is self:
                _shut(connection)


def _shut(connection: HTTPConnection) -> None:
    sock = connection.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes a blocked recv or send at once


class _DeadlineMixin:
    def request(self, *args: Any, **kwargs: Any) -> Any:
        deadline = getattr(_local, "deadline", None)
        if deadline is not None:
            deadline.attach(self)
        return super().request(*args, **kwargs)  # type: ignore[misc]

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        deadline = getattr(_local, "deadline", None)
        if deadline is not None:
            deadline.attach(self)  # the deadline may have passed while connecting


class _DeadlineHTTPConnection(_DeadlineMixin, HTTPConnection):
    pass


class _DeadlineHTTPSConnection(_DeadlineMixin, HTTPSConnection):
    pass


class _DeadlineHTTPPool(HTTPConnectionPool):
    ConnectionCls = _DeadlineHTTPConnection


class _DeadlineHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


class _DeadlineAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _DeadlineHTTPPool, "https": _DeadlineHTTPSPool}

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if type(manager) is ProxyManager:  # an HTTP(S) proxy; a SOCKS one keeps its own connections (per-read timeout)
            manager.pool_classes_by_scheme = {"http": _DeadlineHTTPPool, "https": _DeadlineHTTPSPool}
        return manager


def new_session(pool_maxsize: int = 8) -> requests.Session:
    """A session whose requests keep the deadline of ``request``; one pool of ``pool_maxsize`` connections per host."""
    session = requests.Session()
    adapter = _DeadlineAdapter(pool_connections=1, pool_maxsize=pool_maxsize, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class Unreachable(Exception):
    """No complete answer: the connection failed or broke."""


class PastDeadline(Exception):
    """No complete answer before the deadline."""


def request(session: requests.Session, method: str, url: str, timeout: float, **kwargs: Any) -> requests.Response:
    """One HTTP exchange, connect to the last byte of the answer within ``timeout`` seconds.

    Raises ``PastDeadline`` or ``Unreachable`` (with the cause as text) instead of requests' errors.
    """
    start = time.monotonic()
    with _Deadline(timeout) as deadline:
        try:
            # The per-read timeout is a second bound, for connections the watchdog cannot see (a proxy's).
            return session.request(method, url, timeout=(min(CONNECT_TIMEOUT, timeout), timeout), **kwargs)
        except requests.ConnectTimeout:
            raise Unreachable(f"ConnectTimeout: no connection within {min(CONNECT_TIMEOUT, timeout):g} s") from None
        except requests.Timeout:
            raise PastDeadline() from None
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError) as e:  # fmt: skip
            if deadline.expired or time.monotonic() - start >= timeout:
                raise PastDeadline() from None
            raise Unreachable(f"{type(e).__name__}: {cause_text(e)}") from None


def post_json(
    session: requests.Session,
    url: str,
    payload: dict[str, Any],
    *,
    what: str,
    error: type[Exception],
    timeout: float,
    max_retries: int,
    backoff: float,
    headers: dict[str, str] | None = None,
    retry_statuses: Collection[int] = (),
    parse: Callable[[Any], T] | None = None,
) -> T | Any:
    """POST ``payload`` to ``url`` and return the JSON answer, or ``parse(answer)``.

    Failures raise ``error`` naming ``what`` and ``url``; ``parse`` raises ``ValueError`` for an
    answer of the wrong shape, and the error then quotes the start of the body.
    """
    last = ""
    retried_once: set[str] = set()  # the kinds of failure that are asked again once only
    for attempt in range(max_retries + 1):
        delay = backoff * 2**attempt  # before the next attempt, if there is one
        try:
            response = request(session, "POST", url, timeout, json=payload, headers=headers)
        except PastDeadline:
            last, kind = f"no complete answer within {timeout:g} s", "deadline"
        except Unreachable as e:
            last, kind = str(e), "always"
        else:
            status = response.status_code
            if status < 400:
                return _decode(response, what, url, error, parse)
            if status in RETRY_STATUSES or status in retry_statuses:
                last, kind = f"HTTP {status}: {one_line(response.text)}", "always"
                delay = max(delay, _retry_after(response))
            elif status == 500:
                last, kind = f"HTTP 500: {one_line(response.text)}", "500"
            else:
                raise error(f"{what} {url} refused the request: HTTP {status} {one_line(response.text, 300)}")
        if kind != "always":
            if kind in retried_once:
                break
            retried_once.add(kind)
        if attempt < max_retries:
            time.sleep(delay)
    attempts = attempt + 1
    raise error(f"{what} {url} did not answer after {attempts} attempt{'s' * (attempts > 1)} ({last})")


def get_json(session: requests.Session, url: str, *, what: str, error: type[Exception], timeout: float) -> Any:
    """GET ``url`` once and return its JSON answer; any failure raises ``error`` naming ``what`` and ``url``."""
    try:
        response = request(session, "GET", url, timeout)
    except PastDeadline:
        raise error(f"{what} at {url} failed: no complete answer within {timeout:g} s") from None
    except Unreachable as e:
        raise error(f"{what} at {url} failed: {e}") from None
    if response.status_code >= 400:
        raise error(f"{what} at {url} failed: HTTP {response.status_code} {one_line(response.text)}")
    return _decode(response, what, url, error, None)


def _decode(
    response: requests.Response, what: str, url: str, error: type[Exception], parse: Callable[[Any], T] | None
) -> T | Any:
    try:
        answer = response.json()
    except ValueError:
        raise error(f"{what} {url} answered with invalid JSON: {body_start(response.text)}") from None
    if parse is None:
        return answer
    try:
        return parse(answer)
    except ValueError as e:
        raise error(f"{what} {url} answered {e}: {body_start(response.text)}") from None


def _retry_after(response: requests.Response) -> float:
    """The wait a ``Retry-After`` header in seconds asks for (its date form is ignored), capped."""
    value = response.headers.get("Retry-After", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return 0.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER) if math.isfinite(seconds) else 0.0
