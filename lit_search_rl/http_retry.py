"""JSON over HTTP with bounded retries, shared by the retrieval client and the LLM judge.

Connection errors, timeouts, 5xx and the given retryable statuses (429) are retried with
exponential backoff; any other 4xx fails at once; after the last attempt the error names the
server and the last failure, in one line.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import Any

import requests


def one_line(text: str, limit: int = 200) -> str:
    """``text`` with its whitespace collapsed, cut to ``limit`` characters."""
    return " ".join(text.split())[:limit]


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
) -> Any:
    """POST ``payload`` to ``url`` and return the JSON answer; failures raise ``error`` naming ``what`` and ``url``."""
    last = ""
    attempts = max_retries + 1
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            response = session.post(url, json=payload, headers=headers, timeout=timeout)
        except (requests.ConnectionError, requests.Timeout) as e:
            last = f"{type(e).__name__}: {one_line(str(e))}"
            continue
        if response.status_code >= 500 or response.status_code in retry_statuses:
            last = f"HTTP {response.status_code}: {one_line(response.text)}"
            continue
        if response.status_code >= 400:
            raise error(f"{what} {url} refused the request: HTTP {response.status_code} {one_line(response.text, 300)}")
        try:
            return response.json()
        except ValueError:
            raise error(f"{what} {url} answered with invalid JSON") from None
    raise error(f"{what} {url} did not answer after {attempts} attempts ({last})")
